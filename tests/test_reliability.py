"""Reliability and security: safe loading, exact resume, Ctrl-C, NaN loss, bad data, bad arguments, predict."""
import io
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ENV, ROOT, TRAIN, assert_one_line_error, make_subset, png, run
from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils.checkpoint import load_checkpoint
from utils.files import atomic_save
from utils.weights import safe_load
from utils.dataloader import PairItems, list_images
from utils.errors import ImageError, WeightsError
from utils.images import open_image, verify_image

def own_data(root, counts):
    """An own-data dataset: images_background/<class>/<i>.png with counts[class] images."""
    for name, count in counts.items():
        (root / "images_background" / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            png(root / "images_background" / name / f"{i}.png", seed=sum(map(ord, name)) * 100 + i)
    return root


def truncated_png(path):
    data = io.BytesIO()
    Image.fromarray(np.full((40, 40), 200, np.uint8), "L").save(data, "PNG")
    path.write_bytes(data.getvalue()[:-30])
    return path


def bomb_png(path, side=20000):
    """A PNG header claiming side x side pixels (above Pillow's 2 x MAX_IMAGE_PIXELS guard), no pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


class CreateFile:
    """Unpickling this object would open (create) `path`: a stand-in for any code a pickle could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def tiny_omniglot(small1, tmp_path):
    """4 real Omniglot characters x 4 drawers; with train_ratio 0.5: 2 training and 2 validation steps at batch 4."""
    return make_subset(small1, tmp_path / "dataset", alphabets=1, characters=4, drawers=4)


def test_safe_loading_refuses_code_in_predictor_and_training(tiny_omniglot, tmp_path):
    marker = tmp_path / "created_by_pickle"
    torch_file, raw_file = tmp_path / "evil.pth", tmp_path / "evil_raw.pth"
    torch.save({"fully_connect2.weight": CreateFile(marker)}, torch_file)
    raw_file.write_bytes(pickle.dumps(CreateFile(marker), protocol=2))
    pickle.loads(raw_file.read_bytes()).close()  # the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()

    for path in (torch_file, raw_file):
        with pytest.raises(WeightsError, match="refused to load"):
            safe_load(str(path))
        with pytest.raises(WeightsError, match="refused to load"):
            Siamese(model_path=str(path), input_shape=[32, 32], cuda=False, verbose=False)
    assert_one_line_error(run("predict.py", "a.png", "b.png", "--model_path", torch_file), "refused to load")
    data = ["--dataset_path", tiny_omniglot, "--train_ratio", "0.5", "--save_dir", tmp_path / "logs", *TRAIN]
    assert_one_line_error(run("train.py", *data, "--model_path", torch_file), "refused to load")
    assert_one_line_error(run("train.py", *data, "--resume", raw_file), "refused to load")
    assert not marker.exists()
    assert not (tmp_path / "logs" / "last.ckpt").exists()


@pytest.mark.slow
def test_resume_continues_exactly(tiny_omniglot, tmp_path):
    data = ["--dataset_path", tiny_omniglot, "--train_ratio", "0.5", "--Epoch", 4, *TRAIN]
    whole, split = tmp_path / "whole", tmp_path / "split"
    result = run("train.py", *data, "--save_dir", whole)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run("train.py", *data, "--save_dir", split, "--stop_after", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"continue with: python train.py --resume {split / 'last.ckpt'}" in result.stdout
    halfway = load_checkpoint(str(split / "last.ckpt"))
    assert halfway["epoch"] == 2 and len(halfway["losses"]) == 2
    result = run("train.py", "--resume", split / "last.ckpt")  # everything else comes from the checkpoint
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming from" in result.stdout and "epoch 3/4" in result.stdout

    single, resumed = load_checkpoint(str(whole / "last.ckpt")), load_checkpoint(str(split / "last.ckpt"))
    assert single["epoch"] == resumed["epoch"] == 4
    assert len(single["losses"]) == 4
    assert single["losses"] == resumed["losses"] and single["val_losses"] == resumed["val_losses"]
    logged = [float(v) for v in (Path(resumed["log_dir"]) / "epoch_loss.txt").read_text().split()]
    assert logged == resumed["losses"]  # the resumed run appends to the first part's history
    weights_single = safe_load(str(whole / "last_epoch_weights.pth"))
    weights_resumed = safe_load(str(split / "last_epoch_weights.pth"))
    assert all(torch.equal(weights_single[k], weights_resumed[k]) for k in weights_single)
    assert not torch.equal(halfway["model"]["fully_connect1.weight"], weights_resumed["fully_connect1.weight"])

    finished = run("train.py", "--resume", split / "last.ckpt")
    assert finished.returncode == 2 and "pass a larger --Epoch" in finished.stderr


def as_in_a_terminal():
    """In the child before exec: SIGINT handled and unblocked, as a terminal's Ctrl-C finds it, whatever
    state this pytest process (and the libraries earlier tests loaded) left it in."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_writes_resumable_checkpoint(tiny_omniglot, tmp_path):
    save_dir, out, err = tmp_path / "logs", tmp_path / "out.txt", tmp_path / "err.txt"
    args = ["--dataset_path", tiny_omniglot, "--train_ratio", "0.5", "--Epoch", 50, "--save_dir", save_dir, *TRAIN]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, env=ENV,
                                   stdout=stdout, stderr=stderr, preexec_fn=as_in_a_terminal)
        deadline = time.time() + 90
        while "Epoch 1/50 train" not in err.read_text() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # impatient users press it again while the checkpoint is written
        rc = process.wait(timeout=60)
    checkpoint_path = save_dir / "last.ckpt"
    assert rc == 130, err.read_text()[-2000:]
    assert "Traceback" not in err.read_text()
    assert f"continue with: python train.py --resume {checkpoint_path}" in out.read_text()
    checkpoint = load_checkpoint(str(checkpoint_path))
    done = checkpoint["epoch"]
    assert done == len(checkpoint["losses"]) < 50

    result = run("train.py", "--resume", checkpoint_path, "--Epoch", done + 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Resuming from {checkpoint_path} at epoch {done + 1}/{done + 1}" in result.stdout
    assert load_checkpoint(str(checkpoint_path))["epoch"] == done + 1


def test_nonfinite_loss_stops_without_saving(tiny_omniglot, tmp_path):
    weights = SiameseNetwork((32, 32)).state_dict()
    weights["fully_connect2.weight"].fill_(3e38)  # finite weights whose logits overflow: the loss is inf or NaN
    atomic_save(weights, str(tmp_path / "nan.pth"))
    save_dir = tmp_path / "logs"
    result = run("train.py", "--dataset_path", tiny_omniglot, "--train_ratio", "0.5", "--Epoch", 2,
                 "--save_dir", save_dir, "--model_path", tmp_path / "nan.pth", *TRAIN)
    assert_one_line_error(result, "the loss became", "without saving")
    assert not list(save_dir.glob("*.pth")) and not (save_dir / "last.ckpt").exists()


def test_list_images_skips_junk_and_names_it(tmp_path, capsys):
    root = own_data(tmp_path / "ds", {"a": 3, "b": 3, "empty": 0})
    folder = root / "images_background"
    (folder / "a" / ".hidden.png").write_bytes(b"x")
    (folder / "a" / "notes.txt").write_text("not an image")
    (folder / "b" / "text.png").write_text("a text file named .png")
    truncated_png(folder / "b" / "truncated.png")
    bomb_png(folder / "b" / "huge.png")
    paths, labels, class_names, skipped = list_images(str(root), train_own_data=True)
    assert class_names == ["a", "b"] and labels == [0, 0, 0, 1, 1, 1]
    assert sorted(os.path.basename(p) for p in paths) == ["0.png", "0.png", "1.png", "1.png", "2.png", "2.png"]
    assert skipped == 5
    warnings = capsys.readouterr().err
    for name in ("text.png", "truncated.png", "huge.png", "decompression bomb", "empty"):
        assert name in warnings


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(ImageError, match="truncated.png: not a readable image"):
        open_image(str(truncated_png(tmp_path / "truncated.png")))
    with pytest.raises(ImageError, match="truncated.png: not a readable image"):
        verify_image(str(tmp_path / "truncated.png"))
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="text.png: not a readable image"):
        open_image(str(tmp_path / "text.png"))
    for check in (open_image, verify_image):
        with pytest.raises(ImageError, match="huge.png: image too large, refused as a possible decompression bomb"):
            check(str(bomb_png(tmp_path / "huge.png")))


@pytest.mark.parametrize("counts, options, message", [
    ({"a": 0, "b": 0}, [], "no images found (2 class folders, none with a readable image"),
    ({"only": 12}, [], "the training split has 1 class"),
    ({f"c{i}": 2 for i in range(6)}, [], "the training split has no class with at least 3 images"),
    ({f"c{i}": 4 for i in range(10)}, [], "the validation split has no class with at least 3 images"),
    ({f"c{i}": 10 for i in range(4)}, ["--train_ratio", 0.5, "--batch_size", 64],
     "dataset too small: 20 training and 20 validation images for batch_size 64"),
    (None, [], "no dataset at"),
])
def test_bad_datasets_give_one_line_errors(tmp_path, counts, options, message):
    root = own_data(tmp_path / "ds", counts) if counts is not None else tmp_path / "missing"
    result = run("train.py", "--dataset_path", root, "--train_own_data", "True", "--save_dir", tmp_path / "logs",
                 *TRAIN, *options, timeout=60)  # the original loops forever or hangs on some of these
    assert_one_line_error(result, message)


def test_two_classes_and_the_last_class_are_drawn(tmp_path):
    root = own_data(tmp_path / "ds", {"a": 3, "b": 2})  # b: a folder of 2 images, only usable as a negative
    paths, labels, _, _ = list_images(str(root), train_own_data=True)
    dataset = PairItems(paths, labels, [32, 32], items=1, train=True)
    images, pair_labels = dataset[0].images[0], dataset[0].labels[0]
    assert images.shape == (2, 2, 3, 32, 32) and sorted(pair_labels.tolist()) == [0.0, 1.0]
    rng = random.Random(0)
    for _ in range(50):
        (a, b), (c, d) = dataset.sample_pair(rng)
        assert {Path(p).parent.name for p in (a, b, c)} == {"a"} and Path(d).parent.name == "b"

    many = [f"{i}/{j}.png" for i in range(5) for j in range(3)]
    dataset = PairItems(many, [i for i in range(5) for _ in range(3)], [32, 32], items=1, train=False)
    positives, negatives = set(), set()
    for _ in range(400):
        (a, _), (c, d) = dataset.sample_pair(rng)
        positives.add(a.split("/")[0])
        negatives.add(d.split("/")[0])
        assert c.split("/")[0] != d.split("/")[0]
    assert positives == negatives == {"0", "1", "2", "3", "4"}


def test_worker_errors_end_as_one_line_naming_the_file(tmp_path):
    """A truncated JPEG passes the cheap listing check and fails in a DataLoader worker."""
    folder = tmp_path / "ds" / "images_background"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            data = io.BytesIO()
            pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data, "JPEG")
            (folder / name / f"{i}.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    result = run("train.py", "--dataset_path", tmp_path / "ds", "--train_own_data", "True", "--train_ratio", "0.5",
                 "--save_dir", tmp_path / "logs", *TRAIN, "--num_workers", 1, timeout=90)
    assert_one_line_error(result, str(folder), ".jpg: not a readable image", "truncated")
    assert "Caught" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--epochs", "5"], "unknown name(s): --epochs (did you mean --Epoch?)"),
    (["--Epoch", "ten"], "argument --Epoch: invalid int value: 'ten'"),
    (["--input_shape", "16", "16"], "each side must be at least 32"),
    (["--Epoch", "-3"], "Epoch must be at least 1"),
    (["--optimizer_type", "rmsprop"], "invalid choice: 'rmsprop' (choose from 'adam', 'adamw', 'sgd', 'auto')"),
    (["--lr_decay_type", "linear"], "invalid choice: 'linear' (choose from 'cos', 'step')"),
])
def test_bad_arguments_give_one_message(args, message):
    result = run("train.py", *args, "--dataset_path", "/nonexistent", timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage:"), result.stderr
    assert "error: " in lines[1] and message in lines[1], lines[1]


def test_predict_reports_bad_input_in_one_line_and_the_loop_survives(tmp_path):
    weights = str(tmp_path / "w32.pth")
    atomic_save(SiameseNetwork((32, 32)).state_dict(), weights)
    first, second = png(tmp_path / "one.png", seed=1), png(tmp_path / "two.png", seed=2)
    (tmp_path / "text.png").write_text("not an image")
    truncated = truncated_png(tmp_path / "truncated.png")
    options = ["--model_path", weights, "--input_shape", 32, 32, "--cuda", "False", "--show", "False"]

    answers = [tmp_path / "missing.png", tmp_path, tmp_path / "text.png", truncated, "", first, truncated, second]
    result = run("predict.py", *options, stdin="\n".join(map(str, answers)) + "\n", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Open Error!") == 6
    assert "no such file" in result.stdout and "is a directory" in result.stdout
    assert "Similarity of one.png and two.png: 0." in result.stdout

    assert_one_line_error(run("predict.py", tmp_path / "missing.png", first, *options), "missing.png: no such file")
    assert_one_line_error(run("predict.py", first, tmp_path / "text.png", *options), "text.png: not a readable image")
    atomic_save(SiameseNetwork((64, 64)).state_dict(), str(tmp_path / "w64.pth"))
    wrong_size = run("predict.py", first, second, "--model_path", tmp_path / "w64.pth", *options[2:])
    assert_one_line_error(wrong_size, "fully_connect1.weight", "pass the input_shape the weights were trained at")
