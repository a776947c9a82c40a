"""Batch scoring: predict.py --pairs, on real PNG files with a real SiameseNetwork at 32x32."""
import csv
import os
import random
import re

import pytest
import torch
from helpers import assert_one_line_error, run
from PIL import Image, ImageDraw

import predict
from nets.siamese import SiameseNetwork
from siamese import Siamese
from utils.files import atomic_path, atomic_write
from utils.errors import DataError
from utils.pairs import read_pairs

SHAPE = [32, 32]
MODEL = ["--input_shape", *SHAPE, "--cuda", "False"]
TIMEOUT = 600  # seconds per predict.py run: importing torch alone took minutes on the loaded 2-core machine


def drawing(path, seed):
    """Write a 48x48 PNG of a few random black strokes on white, glyph-like."""
    rng = random.Random(seed)
    image = Image.new("L", (48, 48), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        draw.line([(rng.randint(0, 47), rng.randint(0, 47)) for _ in range(3)], fill=0, width=rng.randint(2, 6))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A freshly initialised network saved as a state dict, its head made steeper."""
    torch.manual_seed(0)
    net = SiameseNetwork(SHAPE)
    with torch.no_grad():  # untrained scores sit within 1e-3 of 0.5; steeper, a swapped row fails a 1e-4 check
        net.fully_connect2.weight.mul_(30)
    path = tmp_path_factory.mktemp("weights") / "untrained.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def predictor(weights):
    return Siamese(model_path=str(weights), input_shape=SHAPE, cuda=False, verbose=False)


@pytest.fixture
def folder(tmp_path):
    """tmp_path with img/d0.png ... img/d5.png and img/broken.png, a PNG cut short."""
    for seed in range(6):
        drawing(tmp_path / "img" / f"d{seed}.png", seed)
    data = (tmp_path / "img" / "d0.png").read_bytes()
    (tmp_path / "img" / "broken.png").write_bytes(data[:len(data) // 2])
    return tmp_path


def write_csv(path, text):
    path.write_text(text)
    return path


def read_scores(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def brute_force_auc(scores, labels):
    """The share of (same, different) pairs in which the same pair scores higher; ties count half."""
    positives = [s for s, label in zip(scores, labels) if label]
    negatives = [s for s, label in zip(scores, labels) if not label]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


LABELLED = [  # paths relative to the CSV's folder; predict.py runs from the repository root
    ("img/d0.png", "img/d1.png", "0"), ("img/d0.png", "./img/d0.png", "1"), ("img/d2.png", "img/d3.png", "1"),
    ("img/d4.png", "img/missing.png", "1"), ("img/broken.png", "img/d5.png", "0"), ("img/d1.png", "img/d2.png", "1"),
    ("img/d3.png", "img/d4.png", "0"), ("img/d5.png", "img/d0.png", "1"), ("img/d1.png", "img/d0.png", "0"),
    ("img/d2.png", "img/d5.png", "0"),
]


def test_scores_match_similarity_and_labels_give_the_printed_auc(folder, weights, predictor):
    lines = ["left,right,same"] + [",".join(row) for row in LABELLED]
    pairs = write_csv(folder / "pairs.csv", "\n".join(lines) + "\n")
    scored = [row for row in LABELLED if "missing" not in row[1] and "broken" not in row[0]]
    reference = [predictor.similarity(folder / a, folder / b) for a, b, _ in scored]
    labels = [int(label) for _, _, label in scored]
    ordered = sorted(reference)
    gap, low = max((high - low, low) for low, high in zip(ordered, ordered[1:]))
    threshold = low + gap / 2  # inside the widest gap between two scores: no rounding moves a pair across it
    assert gap > 1e-3, ordered  # untrained weights still tell these drawings apart by more than rounding
    result = run("predict.py", "--pairs", pairs, "--model_path", weights, *MODEL, "--threshold", threshold,
                 timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "10 pairs over 8 distinct images: embedded 6, 2 unreadable, 2 pair(s) not scored" in result.stdout
    table = read_scores(folder / "pairs_scores.csv")  # the default --out: beside the pairs file
    assert table[0] == ["left", "right", "same", "similarity", "predicted_same", "error"]
    assert [tuple(row[:3]) for row in table[1:]] == LABELLED
    written = {tuple(row[:3]): row[3:] for row in table[1:]}
    for (a, b, label), expected in zip(scored, reference):
        assert float(written[a, b, label][0]) == pytest.approx(expected, abs=1e-4)
        assert written[a, b, label][1] == str(int(expected >= threshold)) and written[a, b, label][2] == ""
    auc = float(re.search(r"ROC AUC (\S+),", result.stdout).group(1))
    assert auc == pytest.approx(brute_force_auc(reference, labels), abs=1e-4)
    accuracy = float(re.search(r"accuracy (\S+) at", result.stdout).group(1))
    expected_accuracy = sum((s >= threshold) == bool(y) for s, y in zip(reference, labels)) / len(labels)
    assert accuracy == pytest.approx(expected_accuracy, abs=1e-4)
    assert "8 labelled pairs" in result.stdout and "2 with unreadable images left out" in result.stdout


def test_an_unreadable_image_marks_only_its_lines(folder, weights):
    rows = ["img/d0.png,img/d1.png", "img/d2.png,img/missing.png", "img/d3.png,img/d4.png",
            "img/missing.png,img/d5.png", "img/broken.png,img/d1.png"]
    pairs = write_csv(folder / "pairs.csv", "\n".join(rows) + "\n")
    out = folder / "scores.csv"
    result = run("predict.py", "--pairs", pairs, "--out", out, "--model_path", weights, *MODEL, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    table = read_scores(out)
    assert table[0] == ["image_1", "image_2", "similarity", "same", "error"]  # no header given: these names
    written = {f"{row[0]},{row[1]}": (row[2], row[4]) for row in table[1:]}
    for good in (rows[0], rows[2]):
        assert 0 < float(written[good][0]) < 1 and written[good][1] == ""
    for bad, what in ((rows[1], "missing.png: no such file"), (rows[3], "missing.png: no such file"),
                      (rows[4], "broken.png: not a readable image")):
        assert written[bad][0] == "" and what in written[bad][1]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert f"{pairs}:2: " in warnings[0] and "missing.png: no such file (2 line(s) not scored)" in warnings[0]
    assert f"{pairs}:5: " in warnings[1] and "broken.png: not a readable image" in warnings[1]


def test_every_distinct_image_is_embedded_once(folder, weights, monkeypatch, capsys):
    images = [f"img/d{seed}.png" for seed in range(6)]
    spellings = {path: [path, f"./{path}", str(folder / path)] for path in images}  # one file, three ways
    rows = [f"{spellings[a][n % 3]},{spellings[b][n % 2]}" for n, (a, b) in
            enumerate((a, b) for a in images for b in images)] + ["img/d1.png,img/missing.png"]
    pairs = write_csv(folder / "pairs.csv", "\n".join(rows) + "\n")
    embedded = []
    real_embed = Siamese.embed
    monkeypatch.setattr(Siamese, "embed", lambda self, batch, *a, **k: embedded.append(len(batch))
                        or real_embed(self, batch, *a, **k))
    predict.main(["--pairs", str(pairs), "--model_path", str(weights), *map(str, MODEL)])
    assert sum(embedded) == len(images)  # 6 readable files, not the 74 paths the 37 lines name
    assert "37 pairs over 7 distinct images: embedded 6, 1 unreadable" in capsys.readouterr().out
    table = read_scores(folder / "pairs_scores.csv")
    assert len(table) == 38 and sum(row[2] == "" for row in table[1:]) == 1


@pytest.mark.parametrize("text, line, fragment", [
    ("img/d0.png,img/d1.png,0\nimg/d0.png,img/d1.png\n", 2, "expected 3 fields like line 1"),
    ("left,right,same\n\nimg/d0.png,img/d1.png,yes\n", 3, "the label must be 0 (different) or 1 (same), not 'yes'"),
    ("img/d0.png,img/d1.png,img/d2.png,1\n", 1, "expected 2 or 3 fields"),
    ("img/d0.png,img/d1.png\n\"img/d2.png,img/d3.png\n", 2, "not valid CSV"),
])
def test_a_malformed_line_is_one_error_naming_it(folder, weights, text, line, fragment):
    pairs = write_csv(folder / "pairs.csv", text)
    (folder / "pairs_scores.csv").write_text("earlier scores\n")
    result = run("predict.py", "--pairs", pairs, "--model_path", weights, *MODEL, timeout=TIMEOUT)
    assert_one_line_error(result, f"{pairs}:{line}: ", fragment)
    assert (folder / "pairs_scores.csv").read_text() == "earlier scores\n"


@pytest.mark.parametrize("arguments, fragment, rc", [
    (["--pairs", "{folder}/none.csv"], "{folder}/none.csv: no such file", 1),
    (["--pairs", "{folder}/pairs.csv", "--out", "{folder}/no/scores.csv"], "no such folder {folder}/no", 1),
    (["--pairs", "{folder}/pairs.csv", "--out", "{folder}/pairs.csv"], "is the pairs file itself", 1),
    (["--pairs", "{folder}/pairs.csv", "{folder}/img/d0.png", "{folder}/img/d1.png"], "it takes no image paths", 2),
    (["--out", "{folder}/scores.csv"], "--out goes with --pairs", 2),
])
def test_what_cannot_work_is_refused_in_one_line(folder, weights, arguments, fragment, rc):
    write_csv(folder / "pairs.csv", "img/d0.png,img/d1.png\n")
    arguments = [argument.format(folder=folder) for argument in arguments]
    result = run("predict.py", *arguments, "--model_path", weights, *MODEL, timeout=TIMEOUT)
    assert_one_line_error(result, fragment.format(folder=folder), rc=rc)
    assert not (folder / "pairs_scores.csv").exists()


def test_a_header_is_detected_and_paths_resolve_from_the_csv_folder(folder):
    body = "img/d0.png,img/d1.png,1\nimg/d2.png,img/none.png,0\n"
    images = [str(folder / "img" / name) for name in ("d0.png", "d1.png", "d2.png", "none.png")]
    for first, header in (("image_1,image_2,label\n", ["image_1", "image_2", "label"]), ("", None),
                          ("a,b,same\n", ["a", "b", "same"])):
        read = read_pairs(write_csv(folder / "pairs.csv", first + body))
        assert read.header == header and read.paths == images and list(read.lines) == [1 + bool(first), 2 + bool(first)]
        assert (list(read.first), list(read.second), list(read.labels)) == ([0, 2], [1, 3], [1, 0])
    # no 0/1 label: a data line still, because its paths name images (it is then malformed)
    with pytest.raises(DataError, match=r"pairs.csv:1: the label must be 0"):
        read_pairs(write_csv(folder / "pairs.csv", "missing.png,img/d1.png,maybe\n" + body))
    two = read_pairs(write_csv(folder / "pairs.csv", "first,second\nimg/d0.png,img/d1.png\n"))
    assert two.header == ["first", "second"] and list(two.lines) == [2] and two.paths == images[:2]
    extensionless = folder / "img" / "plain"
    extensionless.write_bytes((folder / "img" / "d0.png").read_bytes())
    assert read_pairs(write_csv(folder / "pairs.csv", "img/plain,img/d1.png\n")).header is None


def test_an_interrupted_write_leaves_the_earlier_file_whole(tmp_path):
    out = tmp_path / "scores.csv"
    out.write_text("earlier scores\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(out), ".csv") as tmp:
            with open(tmp, "w") as f:
                f.write("a.png,b.png,0.5\n")
            raise KeyboardInterrupt
    assert out.read_text() == "earlier scores\n"
    assert os.listdir(tmp_path) == ["scores.csv"]  # no temporary left behind
    atomic_write(b"a.png,b.png,0.5\n", str(out))
    assert out.read_text() == "a.png,b.png,0.5\n"