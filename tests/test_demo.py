"""A reduced `python train.py --demo`: builds a small glyph set, trains, evaluates and draws its figure."""
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, direct_probability, run
from PIL import Image

import train
from nets.siamese import backbone_of
from tools import demo
from tools.glyphs import make_glyphs
from utils.configurator import read_preset
from utils.images import preprocess


def demo_setting(name):
    """The value the demo's preset (config/demo.py) gives `name`."""
    return read_preset(demo.PRESET, train.CONFIG)[name]


def two_alphabet_glyphs(out, max_characters):
    """The real glyph set, cut to two alphabets per split so the test trains and evaluates in seconds."""
    make_glyphs(out, max_characters=max_characters)
    out = Path(out)
    for split in ("images_background", "images_evaluation"):
        for alphabet in sorted((out / split).iterdir())[2:]:
            shutil.rmtree(alphabet)


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setattr(demo, "make_glyphs", two_alphabet_glyphs)
    data, logs, figure = tmp_path / "glyphs", tmp_path / "logs", tmp_path / "demo_predictions.png"
    # Cuda left at its default (True: a GPU when there is one), as a user runs the demo on a machine without one
    argv = ["--dataset_path", str(data), "--save_dir", str(logs),
            "--batch_size", "4", "--images_per_class", "2", "--Epoch", "1", "--train_ratio", "0.5"]
    result = demo.run_demo(argv, max_characters=2, figure_path=str(figure), way=2, trials=10)

    assert (data / "images_background").is_dir() and (data / "images_evaluation").is_dir()
    assert result["way"] == 2 and result["trials"] == 10 and result["within_alphabet"]
    # the reported scores are the saved best weights' own, computed here by a path that shares no code with ours
    state = torch.load(logs / "best_epoch_weights.pth", weights_only=True)
    assert backbone_of(state) == demo_setting("backbone")
    shape, crop = demo_setting("input_shape"), demo_setting("crop_to_ink")
    same, different = demo.example_pairs(data / "images_evaluation")
    for (a, b), reported in ((same, result["same_score"]), (different, result["different_score"])):
        expected = direct_probability(state, preprocess(a, shape, crop_to_ink=crop)[None],
                                      preprocess(b, shape, crop_to_ink=crop)[None])
        assert abs(float(expected) - reported) < 1e-3
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
    # the commands it prints next work as printed, from a folder holding img/ (the gallery's figure lands there)
    expected = demo.next_commands(str(logs / "best_epoch_weights.pth"), str(data / "images_evaluation"), way=2)
    printed = [line.strip() for line in capsys.readouterr().out.split("Try next")[1].splitlines()[1:]]
    assert printed[:len(expected)] == expected
    shutil.copytree(ROOT / "img", tmp_path / "img")
    for command in expected:
        _, script, *args = shlex.split(command)
        result = run(script, *args, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
    assert (tmp_path / "matches.png").is_file()
