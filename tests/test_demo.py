"""A reduced `python train.py --demo`: builds a small glyph set, trains, evaluates and draws its figure."""
import shutil
import sys
from pathlib import Path

from PIL import Image

import train
from utils import demo
from utils.datasets import make_glyphs


def two_alphabet_glyphs(out, max_characters):
    """The real glyph set, cut to two alphabets per split so the test trains and evaluates in seconds."""
    make_glyphs(out, max_characters=max_characters)
    out = Path(out)
    for split in ("images_background", "images_evaluation"):
        for alphabet in sorted((out / split).iterdir())[2:]:
            shutil.rmtree(alphabet)


def test_reduced_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setattr(demo, "make_glyphs", two_alphabet_glyphs)
    data, logs, figure = tmp_path / "glyphs", tmp_path / "logs", tmp_path / "demo_predictions.png"
    config = train.parse_train_config(demo.DEMO_ARGS + [
        "--dataset_path", str(data), "--save_dir", str(logs), "--Cuda", "False",
        "--batch_size", "4", "--Epoch", "1", "--train_ratio", "0.5",
    ])
    assert config["input_shape"] == [32, 32] and config["pretrained"] is False
    result = demo.run_demo(train.main, config, figure_path=str(figure), way=2, trials=10, max_characters=2)

    assert (data / "images_background").is_dir() and (data / "images_evaluation").is_dir()
    assert (logs / "best_epoch_weights.pth").is_file()
    assert result["way"] == 2 and result["trials"] == 10 and 0.0 <= result["accuracy"] <= 1.0
    assert 0.0 <= result["same_score"] <= 1.0 and 0.0 <= result["different_score"] <= 1.0
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
