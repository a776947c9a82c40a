"""What a hostile tester tried (issue 24): unbounded reads, walking zeros, formulas, links, zip bombs, huge CSVs,
photos at full size, damaged caches and weights, and interruptions; each is one line, bounded, or cleaned up."""
import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from helpers import ENV, ROOT, png
from PIL import Image, ImageDraw

import eval_oneshot
import export
import predict
import tools.datasets
import tools.omniglot
import utils.files
import utils.images
import utils.oneshot
from nets.siamese import SiameseNetwork
from siamese import Siamese
from tools.omniglot import OMNIGLOT_ZIPS, get_omniglot
from utils.dataloader import list_images
from utils.errors import DataError, ImageError, WeightsError
from utils.gallery import CACHE_NAME, rank_gallery
from utils.images import decode_png, eval_transform, load_image, open_image, verify_image
from utils.interrupts import exit_on_interrupt
from utils.oneshot import parse_run
from utils.pairs import read_pairs

SHAPE = [32, 32]
SMALL1 = "images_background_small1"


class Blocked(Exception):
    """A test blocked (not an OSError, which readers catch)."""


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a test that blocks (a FIFO opened for reading waits for a writer) instead of hanging the suite."""
    def timed_out(signum, frame):
        signal.alarm(5)  # again, should the code under test swallow it and block once more
        raise Blocked("blocked for 120 s")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Untrained ResNet18 Siamese weights at 32x32 (fast to build and run)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(SiameseNetwork(SHAPE, "resnet18").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def predictor(weights):
    return Siamese(model_path=str(weights), input_shape=SHAPE, cuda=False, verbose=False)


def model_args(weights):
    return ["--model_path", str(weights), "--input_shape", *map(str, SHAPE), "--cuda", "False"]


@pytest.fixture
def hostile(tmp_path):
    """tmp_path with ok0.png ... ok2.png, fifo.png (a FIFO), zero.png (a link to /dev/zero) and nothing else."""
    for seed in range(3):
        png(tmp_path / f"ok{seed}.png", seed=seed)
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    return tmp_path


def exit_message(call):
    """The message of the SystemExit `call()` raises (argparse's exits print theirs and carry a code)."""
    with pytest.raises(SystemExit) as stopped:
        call()
    return str(stopped.value.code)


def dead_pid():
    """The pid of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# 1. Reads are bounded whatever the file is


def test_image_readers_refuse_fifos_devices_and_huge_files_unread(hostile, monkeypatch):
    from utils.images import load_fitted

    readers = [open_image, load_image, verify_image, lambda path: load_fitted(path, SHAPE)]
    for reader in readers:
        for name in ("fifo.png", "zero.png"):
            with pytest.raises(ImageError, match=f"{name}: not a regular file"):
                reader(str(hostile / name))
        assert decode_png(str(hostile / "fifo.png")) is None
    size = (hostile / "ok0.png").stat().st_size
    monkeypatch.setattr(utils.images, "MAX_IMAGE_BYTES", size - 1)
    for reader in readers:
        with pytest.raises(ImageError, match=rf"ok0.png: too large for an image: {size:,} bytes, more than the limit"):
            reader(str(hostile / "ok0.png"))


def test_predict_two_images_and_the_interactive_loop_refuse_a_fifo(hostile, weights, monkeypatch, capsys):
    message = exit_message(lambda: predict.main([str(hostile / "fifo.png"), str(hostile / "ok0.png"),
                                                 *model_args(weights)]))
    assert message.startswith("error: ") and "fifo.png: not a regular file" in message
    answers = iter([str(hostile / "zero.png"), str(hostile / "ok0.png")])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    path, image = predict.ask_image("image:")
    said = capsys.readouterr().out
    assert path.endswith("ok0.png") and image.size == (40, 40)
    assert said.startswith(f"Open Error! {hostile / 'zero.png'}: not a regular file") and "Try again!" in said

def test_gallery_skips_devices_fifos_and_huge_files(hostile, predictor, monkeypatch, capsys):
    big = hostile / "big.png"
    png(big, size=(200, 200), seed=9)
    monkeypatch.setattr(utils.images, "MAX_IMAGE_BYTES", big.stat().st_size - 1)  # the small ones stay under it
    images, _ = rank_gallery(predictor, str(hostile), str(hostile / "ok0.png"), top=10, progress=False)
    assert sorted(name for _, name in images) == ["ok0.png", "ok1.png", "ok2.png"]
    warnings = capsys.readouterr().err
    assert "zero.png (not a regular file)" in warnings and "fifo.png (not a regular file)" in warnings
    assert "big.png: too large for an image" in warnings


def test_pairs_naming_a_fifo_or_a_device_leave_only_their_lines_unscored(hostile, weights, capsys):
    pairs = hostile / "pairs.csv"
    pairs.write_text("ok0.png,ok1.png\nok0.png,fifo.png\nzero.png,ok2.png\n")
    predict.main(["--pairs", str(pairs), *model_args(weights)])
    table = list(csv.reader(open(hostile / "pairs_scores.csv", newline="")))
    assert float(table[1][2]) > 0 and table[2][2] == table[3][2] == ""
    assert "fifo.png: not a regular file" in table[2][4] and "zero.png: not a regular file" in table[3][4]


@pytest.mark.parametrize("make", ["device", "fifo", "folder"])
def test_a_pairs_csv_that_is_not_a_regular_file_is_refused_in_one_line(tmp_path, weights, make):
    path = {"device": "/dev/zero", "fifo": tmp_path / "pairs.csv", "folder": tmp_path}[make]
    if make == "fifo":
        os.mkfifo(path)
    message = exit_message(lambda: predict.main(["--pairs", str(path), "--out", str(tmp_path / "out.csv"),
                                                 *model_args(weights)]))
    expected = "is a directory, not a CSV file" if make == "folder" else "not a regular file"
    assert message == f"error: {path}: {expected}" + ("" if make == "folder" else
                                                       " (a device, a FIFO or a socket), refused unread")


def lake_run(folder):
    """A run of Lake's layout: training/class01.png, class02.png, test/item01.png and class_labels.txt."""
    for name in ("training/class01.png", "training/class02.png", "test/item01.png"):
        png(folder / name, seed=len(name))
    (folder / "class_labels.txt").write_text("run01/test/item01.png run01/training/class02.png\n")
    return folder


def test_lake_runs_read_a_bounded_regular_labels_file_and_regular_images(tmp_path, monkeypatch):
    run = lake_run(tmp_path / "run01")
    assert parse_run(str(run))[2] == [1]
    monkeypatch.setattr(utils.oneshot, "MAX_TEXT_BYTES", 10)
    with pytest.raises(DataError, match="class_labels.txt: too large for a class_labels.txt: 49 bytes"):
        parse_run(str(run))
    monkeypatch.undo()
    (run / "class_labels.txt").unlink()
    os.mkfifo(run / "class_labels.txt")
    with pytest.raises(DataError, match="class_labels.txt: not a regular file"):
        parse_run(str(run))
    lake_run(tmp_path / "run02")
    os.mkfifo(tmp_path / "run02" / "training" / "class03.png")
    with pytest.raises(DataError, match="class03.png: not a regular file"):
        parse_run(str(tmp_path / "run02"))


def test_dataset_listing_skips_fifos_devices_and_huge_images(tmp_path, monkeypatch, capsys):
    for label in ("a", "b"):
        for seed in range(3):
            png(tmp_path / "images_background" / label / f"{seed}.png", seed=seed)
    os.mkfifo(tmp_path / "images_background" / "a" / "fifo.png")
    os.symlink("/dev/zero", tmp_path / "images_background" / "a" / "zero.png")
    png(tmp_path / "images_background" / "b" / "big.png", size=(300, 300))
    monkeypatch.setattr(utils.images, "MAX_IMAGE_BYTES", (tmp_path / "images_background" / "b" / "big.png")
                        .stat().st_size - 1)
    paths, labels, names, skipped = list_images(str(tmp_path), train_own_data=True)
    assert len(paths) == 6 and skipped == 3
    warnings = capsys.readouterr().err
    assert "fifo.png (not a regular file)" in warnings and "zero.png (not a regular file)" in warnings
    assert "big.png: too large for an image" in warnings


# 2. A PNG signature followed by zeros


def test_a_png_signature_followed_by_zeros_is_refused_without_walking_its_zeros(tmp_path):
    from utils.images import PNG_SIGNATURE

    path = tmp_path / "interrupted.png"
    path.write_bytes(PNG_SIGNATURE + bytes(4 << 20))
    tracemalloc.start()
    try:
        assert decode_png(str(path)) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * path.stat().st_size, f"{peak:,} bytes held to look at a {path.stat().st_size:,}-byte file"
    with pytest.raises(ImageError, match="interrupted.png: not a readable image"):
        load_image(str(path))
    from utils.images import png_has_exif

    good = (png(tmp_path / "good.png")).read_bytes()
    assert png_has_exif(good) is False
    ihdr_end = 8 + 8 + 13 + 4
    assert png_has_exif(good[:ihdr_end] + (10 ** 6).to_bytes(4, "big") + b"IDAT" + good[ihdr_end + 8:]) is None
    assert png_has_exif(PNG_SIGNATURE + good[ihdr_end:]) is None  # IHDR must come first
    assert png_has_exif(good[:-12]) is None  # no IEND


# 3. Formulas in the scores CSV


def test_the_scores_csv_neutralises_cells_a_spreadsheet_would_run(tmp_path, weights):
    for name in ("ok.png", "+1.png", "-2.png", "@3.png", '=HYPERLINK("http://x.example","see").png'):
        png(tmp_path / name)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('"=HYPERLINK(""http://x.example"",""see"").png",ok.png,1\n+1.png,-2.png,0\n@3.png,ok.png,1\n')
    predict.main(["--pairs", str(pairs), *model_args(weights)])
    table = list(csv.reader(open(tmp_path / "pairs_scores.csv", newline="")))
    cells = [cell for row in table for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
    assert table[1][0] == "'=HYPERLINK(\"http://x.example\",\"see\").png" and table[2][:2] == ["'+1.png", "'-2.png"]
    from utils.pairs import csv_cell

    assert [csv_cell(text) for text in ("\tx", "\rx", "x=1", "")] == ["'\tx", "'\rx", "x=1", ""]


# 4. Writing through symbolic links


def links(folder):
    """{kind: a symlink in `folder`}: to a regular file (holding "old"), to /dev/stdout, to a FIFO."""
    (folder / "real.out").write_text("old")
    os.mkfifo(folder / "fifo")
    made = {"file": folder / "to_file", "stdout": folder / "to_stdout", "fifo": folder / "to_fifo"}
    for kind, target in (("file", "real.out"), ("stdout", "/dev/stdout"), ("fifo", "fifo")):
        os.symlink(target, made[kind])
    return made


def assert_written_through(link, start):
    """`link` is still a link and its target now starts with the bytes `start`."""
    assert link.is_symlink() and (link.parent / "real.out").read_bytes().startswith(start)
    assert not [p for p in link.parent.iterdir() if p.name.startswith(".tmp-")]


def test_pairs_out_writes_through_a_link_to_a_file_and_refuses_stdout_and_fifos(hostile, weights):
    made = links(hostile)
    (hostile / "pairs.csv").write_text("ok0.png,ok1.png\n")
    for kind in ("stdout", "fifo"):
        message = exit_message(lambda: predict.main(["--pairs", str(hostile / "pairs.csv"), "--out", str(made[kind]),
                                                     *model_args(weights)]))
        assert message.startswith(f"error: --out {made[kind]}: ") and "name a file" in message
    predict.main(["--pairs", str(hostile / "pairs.csv"), "--out", str(made["file"]), *model_args(weights)])
    assert_written_through(made["file"], b"image_1,image_2,similarity")


def test_predict_save_writes_through_a_link_to_a_file_and_refuses_stdout_and_fifos(hostile, weights, capsys):
    made = links(hostile)
    for kind in ("stdout", "fifo"):
        os.rename(made[kind], hostile / f"{kind}.png")
        with pytest.raises(SystemExit) as stopped:
            predict.main([str(hostile / "ok0.png"), str(hostile / "ok1.png"), "--save", str(hostile / f"{kind}.png"),
                          *model_args(weights)])
        assert stopped.value.code == 2 and f"--save {hostile / kind}.png: " in capsys.readouterr().err
    os.rename(made["file"], hostile / "figure.png")
    predict.main([str(hostile / "ok0.png"), str(hostile / "ok1.png"), "--save", str(hostile / "figure.png"),
                  *model_args(weights)])
    assert_written_through(hostile / "figure.png", b"\x89PNG")


class FakeProgram:
    """What torch.onnx.export returns, as far as write_checked uses it: save() writes a file."""

    def save(self, path, external_data):
        with open(path, "wb") as file:
            file.write(b"onnx model")


def test_export_out_writes_through_a_link_to_a_file_and_refuses_stdout_and_fifos(tmp_path, weights, monkeypatch,
                                                                                capsys):
    made = links(tmp_path)
    for kind in ("stdout", "fifo"):
        message = exit_message(lambda: export.main(["--out", str(made[kind]), *model_args(weights)]))
        assert message.startswith(f"error: --out {made[kind]}: ") and "name a file" in message
    monkeypatch.setattr(export, "export_program", lambda *args: FakeProgram())
    monkeypatch.setattr(export, "max_difference", lambda *args: (0.0, 1.0))  # the parity check is test_export's
    args = argparse.Namespace(out=str(made["file"]), input_shape=SHAPE, embedder=True, check_images=[])
    export.write_checked(None, (["images"], ["embeddings"]), args, [])
    assert_written_through(made["file"], b"onnx model")


def own_dataset(folder, classes=3, images=4):
    """`classes` folders of `images` small PNGs each: <class>/<image>."""
    for label in range(classes):
        for index in range(images):
            png(folder / f"class{label}" / f"{index}.png", seed=10 * label + index)
    return folder


def test_eval_oneshot_save_writes_through_a_link_to_a_file_and_refuses_stdout_and_fifos(tmp_path, weights, capsys):
    made = links(tmp_path)
    dataset = own_dataset(tmp_path / "data")
    verify = ["--verify", "--dataset", str(dataset), "--pairs", "20", *model_args(weights)]
    for kind in ("stdout", "fifo"):
        os.rename(made[kind], tmp_path / f"{kind}.png")
        with pytest.raises(SystemExit) as stopped:
            eval_oneshot.main([*verify, "--save", str(tmp_path / f"{kind}.png")])
        assert stopped.value.code == 2 and f"--save {tmp_path / kind}.png: " in capsys.readouterr().err
    os.rename(made["file"], tmp_path / "roc.png")
    eval_oneshot.main([*verify, "--save", str(tmp_path / "roc.png")])
    assert_written_through(tmp_path / "roc.png", b"\x89PNG")


# 5. The data command


@pytest.fixture
def tiny_omniglot(monkeypatch, tmp_path):
    """images_background_small1 made to expect 1 alphabet of 2 characters; returns (zip writer, source folder)."""
    monkeypatch.setitem(OMNIGLOT_ZIPS, SMALL1, ("images_background", 1, 2))
    drawing = png(tmp_path / "drawing.png", size=(105, 105)).read_bytes()
    source = tmp_path / "zips"
    source.mkdir()

    def write_zip(characters=("c1", "c2"), alphabet="Alpha", members=None, method=zipfile.ZIP_DEFLATED):
        """Write source/images_background_small1.zip: 2 drawings per character, or `members` {name: bytes}."""
        members = members or {f"{SMALL1}/{alphabet}/{c}/{c}_{n}.png": drawing for c in characters for n in (1, 2)}
        path = source / f"{SMALL1}.zip"
        with zipfile.ZipFile(path, "w", method) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return path

    return write_zip, source


def patch_member(path, name, local, central):
    """Overwrite fields of member `name` in the zip at `path`: {offset: bytes} in its local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local_at = archive.getinfo(name).header_offset
    central_at = data.index(b"PK\x01\x02")
    while data[central_at + 46:central_at + 46 + len(name)] != name.encode():
        central_at = data.index(b"PK\x01\x02", central_at + 4)
    for base, fields in ((local_at, local), (central_at, central)):
        for offset, value in fields.items():
            data[base + offset:base + offset + len(value)] = value
    path.write_bytes(bytes(data))


def test_a_zip_declaring_huge_members_or_totals_is_refused_before_extracting(tiny_omniglot, tmp_path, monkeypatch):
    write_zip, source = tiny_omniglot
    out = tmp_path / "dataset"
    name = f"{SMALL1}/Alpha/c1/c1_1.png"
    patch_member(write_zip(), name, {}, {24: (10 ** 9).to_bytes(4, "little")})  # the central size field
    with pytest.raises(DataError, match=rf"member {name}: declares 1,000,000,000 bytes, more than the 65,536"):
        get_omniglot(out, [SMALL1], source=source)
    bomb = {f"{SMALL1}/Alpha/c{c}/{n}.png": bytes(1 << 20) for c in (1, 2) for n in (1, 2)}  # 1 MB of zeros: 1 KB
    write_zip(members=bomb)
    with pytest.raises(DataError, match="declares 1,048,576 bytes"):
        get_omniglot(out, [SMALL1], source=source)
    write_zip()
    monkeypatch.setattr(tools.omniglot, "MAX_DRAWING_BYTES", 10)
    with pytest.raises(DataError, match=r"members declare [\d,]+ bytes in all, more than the 400"):
        get_omniglot(out, [SMALL1], source=source)
    assert not (out / "images_background").exists()


def test_a_member_lying_about_its_size_is_read_only_to_its_declared_size(tiny_omniglot, tmp_path):
    write_zip, source = tiny_omniglot
    name = f"{SMALL1}/Alpha/c1/c1_1.png"
    members = {f"{SMALL1}/Alpha/c{c}/{n}.png": b"x" for c in (1, 2) for n in (1, 2)}
    members[name] = bytes(8 << 20)  # 8 MB of zeros, declared as 100 bytes below
    patch_member(write_zip(members=members), name, {22: (100).to_bytes(4, "little")},
                 {24: (100).to_bytes(4, "little")})
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"corrupt member {name}"):
            get_omniglot(tmp_path / "dataset", [SMALL1], source=source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20 and not (tmp_path / "dataset" / "images_background").exists()


def test_a_damaged_deflate_stream_is_one_line_and_the_download_is_deleted(tiny_omniglot, tmp_path, capsys):
    write_zip, source = tiny_omniglot
    path = write_zip()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{SMALL1}/Alpha/c2/c2_1.png")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start:start + 8] = b"\xff" * 8  # block type 3: zlib.error, invalid block type
    path.write_bytes(bytes(data))
    message = exit_message(lambda: tools.datasets.main(["omniglot", "--out", str(tmp_path / "from"), "--from",
                                                        str(source), "--zips", SMALL1]))
    assert message.startswith(f"error: {path}: corrupt member {info.filename} (error: ")
    assert path.exists(), "a zip given with --from is the user's: kept"
    out = tmp_path / "downloaded"
    message = exit_message(lambda: tools.datasets.main(["omniglot", "--out", str(out), "--url", source.as_uri(),
                                                        "--zips", SMALL1]))
    assert "corrupt member" in message and not (out / f"{SMALL1}.zip").exists(), "a damaged download was kept"


@pytest.mark.parametrize("damage, fragment", [
    ({6: b"\x01\x00"}, "encrypted"),  # general purpose flag bit 0 (central header: offset 8)
    ({8: b"\x63\x00"}, "compression method 99"),  # (central header: offset 10)
])
def test_encrypted_members_and_other_methods_are_one_line(tiny_omniglot, tmp_path, damage, fragment):
    write_zip, source = tiny_omniglot
    name = f"{SMALL1}/Alpha/c1/c1_1.png"
    central = {offset + 2: value for offset, value in damage.items()}
    patch_member(write_zip(), name, damage, central)
    message = exit_message(lambda: tools.datasets.main(["omniglot", "--out", str(tmp_path / "dataset"), "--from",
                                                        str(source), "--zips", SMALL1]))
    assert message.startswith(f"error: {source / SMALL1}.zip: member {name}: {fragment}")


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unpacking_is_atomic_adds_to_what_is_there_and_cleans_up(tiny_omniglot, tmp_path, monkeypatch, capsys):
    write_zip, source = tiny_omniglot
    out = tmp_path / "dataset"
    write_zip(("c1", "c2"))
    get_omniglot(out, [SMALL1], source=source)
    before = tree(out / "images_background")
    assert sorted(before) == ["Alpha/c1/c1_1.png", "Alpha/c1/c1_2.png", "Alpha/c2/c2_1.png", "Alpha/c2/c2_2.png"]
    write_zip(("c2", "c3"), alphabet="Alpha")  # a second zip fills the same folder: c1 stays, c2 is replaced
    real_read, reads = tools.omniglot.read_member, []

    def interrupted_read(*args):
        reads.append(1)
        if len(reads) == 4 + 2:  # verification reads all 4 members, then unpacking is stopped in its 2nd
            raise KeyboardInterrupt
        return real_read(*args)

    monkeypatch.setattr(tools.omniglot, "read_member", interrupted_read)
    with pytest.raises(SystemExit) as stopped:
        tools.datasets.main(["omniglot", "--out", str(out), "--from", str(source), "--zips", SMALL1])
    assert stopped.value.code == 130 and capsys.readouterr().err.strip().endswith(f"interrupted; {out} left as it was")
    assert tree(out / "images_background") == before
    assert sorted(p.name for p in out.iterdir()) == ["images_background"], "a temporary folder was left behind"
    monkeypatch.undo()
    monkeypatch.setitem(OMNIGLOT_ZIPS, SMALL1, ("images_background", 1, 2))
    stale = out / f".tmp-{dead_pid()}-unpack-x" / "images_background"  # what a killed run leaves
    stale.mkdir(parents=True)
    get_omniglot(out, [SMALL1], source=source)
    assert sorted(tree(out / "images_background")) == [f"Alpha/{c}/{c}_{n}.png" for c in ("c1", "c2", "c3")
                                                       for n in (1, 2)]
    assert sorted(p.name for p in out.iterdir()) == ["images_background"]


# 6. --pairs details


def test_a_first_row_taken_as_a_header_is_said_in_one_line(hostile, capsys):
    pairs = hostile / "pairs.csv"
    pairs.write_text("left,right\nok0.png,ok1.png\n")
    assert read_pairs(str(pairs)).header == ["left", "right"]
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"note: {pairs}:1: the first line (left,right) is taken as a header")
    pairs.write_text("ok0.png,ok1.png\n")
    assert read_pairs(str(pairs)).header is None and capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["nan", "5", "-0.1", "inf"])
def test_a_threshold_that_is_not_a_probability_is_refused(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        predict.parse_args(["--pairs", str(tmp_path / "pairs.csv"), "--threshold", value])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and error.endswith(f": error: argument --threshold: must be a number from 0 to 1, "
                                                      f"not {value}")


def test_a_large_pairs_csv_is_read_and_written_in_bounded_memory(hostile, predictor):
    pairs, out = hostile / "pairs.csv", hostile / "scores.csv"
    rows = 30000
    long = ["./" * 90 + f"ok{n}.png" for n in range(3)]  # 190 characters naming one of 3 images
    with open(pairs, "w") as file:
        for n in range(rows):
            file.write(f"{long[n % 3]},{long[(n + 1) % 3]},{n % 2}\n")
    size = pairs.stat().st_size
    tracemalloc.start()
    try:
        read = read_pairs(str(pairs))
        reading = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        predict.score_pairs_file(predictor, str(pairs), read, str(out))
        writing = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(read) == rows and len(read.paths) == 3
    assert reading < size / 8 and writing < size / 4, (reading, writing, size)  # the text: 378 bytes a row
    table = list(csv.reader(open(out, newline="")))
    assert len(table) == rows + 1 and table[1][0] == long[0] and all(row[3] for row in table[1:])


def test_control_characters_in_paths_are_printed_escaped(tmp_path, weights, capsys):
    clear = "\x1b[2J"
    message = exit_message(lambda: predict.main(["--pairs", str(tmp_path / f"{clear}.csv"), *model_args(weights)]))
    assert message == f"error: {tmp_path}/\\x1b[2J.csv: no such file"
    png(tmp_path / "ok.png")
    (tmp_path / "pairs.csv").write_text(f"ok.png,{clear}missing.png\n")
    predict.main(["--pairs", str(tmp_path / "pairs.csv"), *model_args(weights)])
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "\\x1b[2Jmissing.png: no such file" in warning[0] and clear not in warning[0]
    message = exit_message(lambda: eval_oneshot.main(["--runs", str(tmp_path), "--model_path", f"w{clear}.pth"]))
    assert message == "error: w\\x1b[2J.pth: no such weights file"


# 7. Photos are decoded near the input size


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A synthetic 4000 x 3000 JPEG: colour gradients and thick strokes, as a 12-megapixel phone photo is."""
    rng = np.random.default_rng(0)
    across, down = np.linspace(0, 255, 4000, dtype=np.float32), np.linspace(0, 255, 3000, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(across[None, :], down[:, None], (across[None, :] + down[:, None]) / 2), -1)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        draw.line([tuple(int(v) for v in rng.integers(0, (4000, 3000))) for _ in range(3)],
                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(20, 120)))
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    image.save(path, quality=90)
    return path


def test_a_large_jpeg_is_decoded_near_the_input_size_and_matches_the_full_decode(photo, predictor, monkeypatch):
    from utils.images import load_fitted

    decoded, real_fit = [], utils.images.fit_image
    monkeypatch.setattr(utils.images, "fit_image", lambda image, geometry: decoded.append(image.shape)
                        or real_fit(image, geometry))
    full = load_image(str(photo))
    for letterbox_image in (False, True):
        reference = eval_transform(SHAPE, letterbox_image)(full).float()
        decoded.clear()
        fitted = load_fitted(str(photo), SHAPE, letterbox_image).float()
        assert len(decoded) == 1 and decoded[0][1] * decoded[0][2] <= 750 * 1000, "decoded at 1/4 or 1/8 scale"
        difference = (fitted - reference).abs()
        assert difference.max() <= 8 and difference.mean() <= 1, (difference.max(), difference.mean())
    with_full, with_path = predictor.embed([full]), predictor.embed([str(photo)])
    assert (with_path - with_full).abs().max() <= 0.02 * with_full.abs().max()


def test_embedding_many_files_holds_only_images_at_the_input_size(photo, predictor, monkeypatch):
    from utils.gallery import embed_files

    held, real_embed = [], Siamese.embed
    monkeypatch.setattr(Siamese, "embed", lambda self, images, *a, **k: held.extend(i.shape for i in images)
                        or real_embed(self, images, *a, **k))
    rows, errors = embed_files(predictor, [str(photo)] * 3, progress=False)
    assert len(rows) == 3 and not errors and held == [(3, *SHAPE)] * 3


# 8. Damaged caches and weights, Ctrl-C


@pytest.mark.parametrize("damage", ["short names", "wrong width", "names not text", "not a tensor"])
def test_an_inconsistent_gallery_cache_is_rebuilt_with_a_warning(hostile, predictor, damage, capsys):
    for name in ("fifo.png", "zero.png"):
        (hostile / name).unlink()
    query = str(hostile / "ok0.png")
    first = rank_gallery(predictor, str(hostile), query, progress=False)
    cache = torch.load(hostile / CACHE_NAME, weights_only=True)
    if damage == "short names":
        cache["names"] = cache["names"][:1]
    elif damage == "wrong width":
        cache["embeddings"] = torch.zeros(len(cache["names"]), 7)
    elif damage == "names not text":
        cache["names"] = [1, 2, 3]
    else:
        cache["embeddings"] = [1, 2, 3]
    torch.save(cache, hostile / CACHE_NAME)
    capsys.readouterr()
    assert rank_gallery(predictor, str(hostile), query, progress=False) == first
    assert "warning: ignoring the embedding cache" in capsys.readouterr().err
    assert rank_gallery(predictor, str(hostile), query, progress=False) == first
    assert "warning" not in capsys.readouterr().err, "the cache was not rebuilt"


@pytest.mark.parametrize("content, fragment", [
    ({"model": [1, 2]}, "not a state dict of tensors ('model' holds list)"),
    ({"fully_connect1.weight": 1}, "not a state dict of tensors ('fully_connect1.weight' holds int)"),
    ("checkpoint input_shape", "a damaged training checkpoint (input_shape 'ab' is not [height, width])"),
    ("checkpoint backbone", "a damaged training checkpoint (backbone 'nope' is not one of vgg16"),
    ("checkpoint threshold", "a damaged training checkpoint (threshold 'x' is not a number in [0, 1])"),
    ("checkpoint calibration", "a damaged training checkpoint (calibration {'scale': 'x', 'shift': 0.0} is not"),
])
def test_weights_holding_what_no_network_takes_are_one_line(tmp_path, hostile, content, fragment):
    if isinstance(content, str):
        config = {"input_shape": SHAPE, "backbone": "resnet18"}
        checkpoint = {"model": SiameseNetwork(SHAPE, "resnet18").state_dict(), "config": config}
        what = content.split()[1]
        if what in ("input_shape", "backbone"):
            config[what] = {"input_shape": "ab", "backbone": "nope"}[what]
        else:
            checkpoint[what] = {"threshold": "x", "calibration": {"scale": "x", "shift": 0.0}}[what]
        content = checkpoint
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError) as refused:
        Siamese(model_path=str(path), cuda=False, verbose=False)
    assert str(refused.value).startswith(f"{path}: {fragment}")
    message = exit_message(lambda: predict.main([str(hostile / "ok0.png"), str(hostile / "ok1.png"),
                                                 "--model_path", str(path), "--cuda", "False"]))
    assert message.startswith(f"error: {path}: {fragment}")


def test_ctrl_c_in_export_and_eval_oneshot_is_one_line_exit_130_nothing_half_written(tmp_path, weights, monkeypatch,
                                                                                    capsys):
    out = tmp_path / "model.onnx"

    def interrupted_check(*args):
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "the temporary .onnx is being written"
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_program", lambda *args: FakeProgram())
    monkeypatch.setattr(export, "max_difference", interrupted_check)
    with pytest.raises(SystemExit) as stopped:
        export.main(["--out", str(out), *model_args(weights)])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"export.py: interrupted; {out} not written"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a temporary was left behind"

    def interrupted_runs(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_oneshot, "evaluate_runs", interrupted_runs)
    with pytest.raises(SystemExit) as stopped:
        eval_oneshot.main(["--runs", str(tmp_path), *model_args(weights)])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("eval_oneshot.py: interrupted")


# 9. Export's temporaries


def test_export_deletes_the_temporaries_of_dead_exports_when_it_starts(tmp_path):
    stale, live = tmp_path / f".tmp-{dead_pid()}-abc.onnx", tmp_path / f".tmp-{os.getpid()}-def.onnx"
    stale.write_bytes(b"45 MB of a killed export")
    live.write_bytes(b"an export still running")
    message = exit_message(lambda: export.main(["--out", str(tmp_path / "model.onnx"), "--model_path",
                                                str(tmp_path / "missing.pth")]))
    assert message.startswith("error: ") and not stale.exists() and live.exists()


def test_sigterm_while_exporting_deletes_the_temporary_onnx(tmp_path, weights):
    pytest.importorskip("onnxruntime", reason="export needs the extras: pip install -r requirements-extras.txt")
    signal.alarm(0)  # an export takes 15 to 60 s on 2 shared cores: the wait below has its own deadline
    out = tmp_path / "model.onnx"
    command = [sys.executable, str(ROOT / "export.py"), "--out", str(out), *model_args(weights)]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"export.py: interrupted; {out} not written"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the temporary .onnx was left behind"


def test_a_sigterm_as_the_temporary_is_created_leaves_nothing_behind(tmp_path, monkeypatch):
    # the race the export test above can hit, made exact: the signal lands the moment the temporary file exists
    make_temporary = tempfile.mkstemp

    def make_temporary_then_terminate(*args, **kwargs):
        made = make_temporary(*args, **kwargs)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        return made

    monkeypatch.setattr(tempfile, "mkstemp", make_temporary_then_terminate)
    out = tmp_path / "scores.csv"
    with pytest.raises(SystemExit) as stopped:
        with exit_on_interrupt(f"interrupted; {out} not written"):
            with utils.files.atomic_path(str(out), ".csv") as tmp:
                open(tmp, "w").write("half")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == [], "the temporary was left behind"
