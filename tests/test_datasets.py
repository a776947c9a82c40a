"""The embedded glyph set and the Omniglot data command (local zips, file:// downloads, verification)."""
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, omniglot_zip
from tools.datasets import main
from tools.glyphs import BACKGROUND_SCRIPTS, DRAWERS, EVALUATION_SCRIPTS, make_glyphs
from tools.omniglot import get_omniglot
from utils.dataloader import list_images
from utils.errors import DataError


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_glyphs_write_omniglot_layout_and_are_deterministic(tmp_path):
    splits = make_glyphs(tmp_path / "a", seed=0, max_characters=3)
    make_glyphs(tmp_path / "b", seed=0, max_characters=3)
    make_glyphs(tmp_path / "c", seed=1, max_characters=3)
    first = tree(tmp_path / "a")
    assert first == tree(tmp_path / "b")
    assert first.keys() == tree(tmp_path / "c").keys() and first != tree(tmp_path / "c")

    background = sorted(p.name for p in (tmp_path / "a" / "images_background").iterdir())
    evaluation = sorted(p.name for p in (tmp_path / "a" / "images_evaluation").iterdir())
    assert background == sorted(s for s, _, _ in BACKGROUND_SCRIPTS)
    assert evaluation == sorted(s for s, _, _ in EVALUATION_SCRIPTS)
    assert not set(background) & set(evaluation)
    for split, characters in splits.items():
        for script, chars in characters.items():
            folders = sorted((tmp_path / "a" / split / script).iterdir())
            assert len(folders) == len(chars) == 3
            for folder in folders:
                images = sorted(folder.glob("*.png"))
                assert len(images) == DRAWERS
                drawings = [np.asarray(Image.open(p).convert("L")) for p in images]
                assert all(d.shape == (105, 105) for d in drawings)
                ink = [d < 128 for d in drawings]
                assert all(0.01 < i.mean() < 0.5 for i in ink), f"{folder}: a drawing is blank or flooded"
                assert len({i.tobytes() for i in ink}) == DRAWERS, f"{folder}: two drawers drew the same image"
    paths, labels, names, skipped = list_images(tmp_path / "a")
    assert len(names) == 3 * len(BACKGROUND_SCRIPTS) and len(paths) == DRAWERS * len(names) and skipped == 0


def test_glyphs_command_and_refusal_to_overwrite(tmp_path):
    out = tmp_path / "dataset"
    command = [sys.executable, "-m", "tools.datasets", "glyphs", "--out", str(out), "--max_characters", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scripts = len(BACKGROUND_SCRIPTS)
    assert f"{out / 'images_background'}: {scripts} alphabets, {2 * scripts} characters" in done.stdout
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert not list(out.glob(".glyphs-*")), "the temporary build folder was left behind"


def check_small1(out):
    alphabets = sorted(p for p in (out / "images_background").iterdir())
    assert [p.name for p in alphabets] == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    paths, labels, names, _ = list_images(out)
    assert len(names) == 136 and len(paths) == 2720
    assert all(p.count("/") - str(out).count("/") == 4 for p in paths)  # images_background/<alphabet>/<character>/<png>
    assert Image.open(paths[0]).size == (105, 105)


def test_omniglot_from_local_small1(tmp_path, capsys):
    source = omniglot_zip("images_background_small1.zip").parent
    main(["omniglot", "--out", str(tmp_path / "dataset"), "--from", str(source), "--zips", "images_background_small1"])
    assert "images_background: +5 alphabets, 136 characters, 2720 images" in capsys.readouterr().out
    check_small1(tmp_path / "dataset")
    assert not list((tmp_path / "dataset").glob(".unzip-*"))
    with pytest.raises(SystemExit, match="no such file"):
        main(["omniglot", "--out", str(tmp_path / "dataset"), "--from", str(tmp_path), "--zips", "images_evaluation"])


def test_omniglot_download_from_file_url(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(omniglot_zip("images_background_small1.zip"), mirror)
    out = tmp_path / "dataset"
    get_omniglot(out, ["images_background_small1"], url=mirror.as_uri())
    check_small1(out)
    assert (out / "images_background_small1.zip").is_file() and not list(out.glob("*.part"))

    with pytest.raises(DataError, match="cannot download .*images_background_small2.zip"):
        get_omniglot(out, ["images_background_small2"], url=mirror.as_uri())
    data = (mirror / "images_background_small1.zip").read_bytes()
    (mirror / "images_background_small1.zip").write_bytes(data[: len(data) // 2])
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match="images_background_small1.zip: not a readable zip"):
        get_omniglot(fresh, ["images_background_small1"], url=mirror.as_uri())
    assert not (fresh / "images_background_small1.zip").exists(), "a broken download was kept"


def test_omniglot_verification_rejects_wrong_contents(tmp_path):
    with zipfile.ZipFile(omniglot_zip("images_background_small1.zip")) as archive:
        members = [n for n in archive.namelist() if "/Latin/" not in n]
        with zipfile.ZipFile(tmp_path / "images_background_small1.zip", "w") as subset:
            for name in members:
                subset.writestr(name, archive.read(name))
    with pytest.raises(DataError, match="4 alphabets and 110 characters, expected 5 and 136"):
        get_omniglot(tmp_path / "out", ["images_background_small1"], source=tmp_path)
    with zipfile.ZipFile(tmp_path / "images_background_small2.zip", "w") as wrong:
        wrong.writestr("images_background_small2/Latin/a.png", b"")
    with pytest.raises(DataError, match="expected only images_background_small2/<alphabet>/<character>/<image>.png"):
        get_omniglot(tmp_path / "out", ["images_background_small2"], source=tmp_path)


def test_train_without_dataset_names_both_data_commands(tmp_path):
    done = subprocess.run(
        [sys.executable, "train.py", "--dataset_path", str(tmp_path / "nothing"), "--save_dir", str(tmp_path / "logs"),
         "--pretrained", "False", "--Cuda", "False"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "python -m tools.datasets glyphs" in done.stderr and "python -m tools.datasets omniglot" in done.stderr
