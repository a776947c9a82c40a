"""The predictor class and predict.py, with weights in the original's format."""
from pathlib import Path

import pytest
import torch
from helpers import direct_probability, original_format_state_dict, run
from PIL import Image

from siamese import Siamese
from utils.errors import WeightsError
from utils.images import preprocess

ROOT = Path(__file__).resolve().parent.parent
SHAPE = [64, 64]


@pytest.fixture(scope="module")
def original_weights(tmp_path_factory):
    """A plain state dict with the original repository's keys, saved as the original saves it."""
    path = tmp_path_factory.mktemp("weights") / "Omniglot_vgg.pth"
    torch.save(original_format_state_dict(SHAPE, seed=1), path)
    return path


@pytest.fixture(scope="module")
def two_glyphs(small1):
    character = sorted((small1 / "Greek").iterdir())[0]
    return sorted(character.glob("*.png"))[:2]


def run_predict(*args, stdin=None):
    return run("predict.py", *args, stdin=stdin)


def test_original_weights_give_the_direct_probability(original_weights, two_glyphs):
    model = Siamese(model_path=str(original_weights), input_shape=SHAPE, cuda=False, verbose=False)
    images = [Image.open(path) for path in two_glyphs]
    probability = model.detect_image(*images, show=False)
    state = torch.load(original_weights, weights_only=True)
    batch = [preprocess(image, SHAPE).unsqueeze(0) for image in images]
    expected = direct_probability(state, *batch).item()
    assert probability == pytest.approx(expected, abs=1e-5)


def test_figure_shows_both_images_and_the_score(original_weights, two_glyphs, tmp_path):
    model = Siamese(model_path=str(original_weights), input_shape=SHAPE, cuda=False, verbose=False)
    out = tmp_path / "pair.png"
    model.detect_image(*[Image.open(path) for path in two_glyphs], show=True, save_path=str(out))
    with Image.open(out) as figure:
        assert figure.width > figure.height > 100


def test_weights_for_another_input_size_are_reported_clearly(original_weights):
    with pytest.raises(WeightsError, match=r"fully_connect1.weight .*input_shape the weights were trained at"):
        Siamese(model_path=str(original_weights), input_shape=[105, 105], cuda=False, verbose=False)


def test_missing_weights_are_reported_clearly(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        Siamese(model_path=str(tmp_path / "none.pth"), cuda=False, verbose=False)


def test_predict_prints_a_probability_and_exits(original_weights, two_glyphs, tmp_path):
    out = tmp_path / "figure.png"
    result = run_predict(*two_glyphs, "--model_path", original_weights, "--input_shape", *SHAPE, "--save", out)
    assert result.returncode == 0, result.stderr
    state = torch.load(original_weights, weights_only=True)
    expected = direct_probability(state, *[preprocess(path, SHAPE).unsqueeze(0) for path in two_glyphs]).item()
    similarity, verdict = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert float(similarity) == pytest.approx(expected, abs=1e-4)  # printed to 4 places
    assert verdict == f"{'same' if expected >= 0.5 else 'different'} (threshold 0.500, default)"
    assert out.is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without a GPU")
def test_cuda_true_without_a_gpu_scores_on_the_cpu_and_says_so(original_weights, two_glyphs):
    result = run_predict(*two_glyphs, "--model_path", original_weights, "--input_shape", *SHAPE, "--cuda", "True")
    assert result.returncode == 0, result.stderr
    assert "no GPU is available here; using the CPU" in result.stderr
    assert result.stdout.strip().splitlines()[-1].split(" ", 1)[1].startswith(("same", "different"))


def test_interactive_loop_survives_a_bad_path(original_weights, two_glyphs, tmp_path):
    first, second = two_glyphs
    lines = [str(tmp_path / "missing.png"), str(first), str(tmp_path), str(second), str(second), str(first)]
    result = run_predict("--model_path", original_weights, "--input_shape", *SHAPE, "--show", "False",
                         stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Open Error!") == 2
    assert "missing.png: no such file" in result.stdout and "is a directory" in result.stdout
    scores = [line for line in result.stdout.splitlines() if "Similarity of" in line]
    assert len(scores) == 2
    assert scores[0].split(": ")[1] == scores[1].split(": ")[1]  # the score is symmetric in its two images


def test_predict_with_a_bad_weights_file_is_one_line(two_glyphs, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    result = run_predict(*two_glyphs, "--model_path", bad)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: not a readable torch weights file")


def test_batch_norm_weights_are_recognised_by_the_predictor(two_glyphs, tmp_path):
    from nets.siamese import SiameseNetwork

    torch.manual_seed(0)
    net = SiameseNetwork(SHAPE, "vgg16_bn")
    for module in net.modules():  # statistics a trained network would have, not the identity defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "bn.pth")
    model = Siamese(model_path=str(tmp_path / "bn.pth"), input_shape=SHAPE, cuda=False, verbose=False)
    assert model.net.backbone == "vgg16_bn"
    batch = [preprocess(path, SHAPE).unsqueeze(0) for path in two_glyphs]
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(*batch)).item()
    assert model.similarity(*two_glyphs) == pytest.approx(expected, abs=1e-5)
