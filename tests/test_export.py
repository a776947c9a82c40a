"""export.py: every backbone's ONNX model checked with onnxruntime, its one-line errors, docs/deploy.md's example."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ENV, ROOT, assert_one_line_error, run

from export import EMBEDDING_TOLERANCE, EXTRAS, PROBABILITY_TOLERANCE
from nets.siamese import BACKBONES, SiameseNetwork
from siamese import Siamese
from utils.images import preprocess

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: "
                                                        "pip install -r requirements-extras.txt")

SHAPE = [32, 32]
IMAGES = [ROOT / "img" / name for name in ("alef_1.png", "alef_2.png", "bet_1.png")]  # real drawings
PAIRS_AT_TWO_BATCH_SIZES = (([0], [1]), ([0, 1, 2], [1, 2, 0]))  # image indices of batch sizes 1 and 3
EXPORT_TIMEOUT = 600  # one export on 2 shared cores takes 15 to 60 s


def save_weights(backbone, folder):
    """A random SiameseNetwork at SHAPE with trained-like batch-norm statistics and scores spread over (0, 1),
    saved as `<backbone>.pth` in `folder`; returns (path, the network in eval mode)."""
    torch.manual_seed(0)
    net = SiameseNetwork(SHAPE, backbone)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # not the identity defaults
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    net.eval()
    images = image_batch()
    with torch.no_grad():  # logits up to +-3: at 0.5 alone, probabilities would hide differences in the head
        logits = net(images[[0, 0, 1]], images[[1, 2, 2]]) - net.fully_connect2.bias
        net.fully_connect2.weight.mul_(3 / logits.abs().max())
    path = folder / f"{backbone}.pth"
    torch.save(net.state_dict(), path)
    return path, net


def image_batch():
    """IMAGES as the predictor prepares them: float32 (3, 3, 32, 32) in [0, 1]."""
    return torch.stack([preprocess(path, SHAPE) for path in IMAGES])


def export(weights, out, *flags, env=None):
    """Run `python export.py` on `weights` at SHAPE writing `out`; returns the CompletedProcess."""
    args = ["--model_path", weights, "--input_shape", *SHAPE, "--out", out, *flags]
    if env is None:
        return run("export.py", *args, timeout=EXPORT_TIMEOUT)
    return subprocess.run([sys.executable, str(ROOT / "export.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=EXPORT_TIMEOUT)


def printed_difference(stdout, what):
    """The max |difference| of `what` ("similarity" or "embeddings") that export.py printed."""
    match = re.search(rf"max \|difference\| of {what} (\S+)", stdout)
    assert match, stdout
    return float(match.group(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(backbone, *flags) -> (weights, network, .onnx path, CompletedProcess); each export runs once."""
    done = {}

    def export_once(backbone, *flags):
        if (backbone, *flags) not in done:
            folder = tmp_path_factory.mktemp(backbone)
            weights, net = save_weights(backbone, folder)
            out = folder / "model.onnx"
            done[(backbone, *flags)] = weights, net, out, export(weights, out, *flags)
        return done[(backbone, *flags)]

    return export_once


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_pair_scorer_gives_pytorchs_probabilities_at_two_batch_sizes(exported, backbone):
    weights, net, out, result = exported(backbone, "--check_images", *IMAGES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert printed_difference(result.stdout, "similarity") <= PROBABILITY_TOLERANCE
    assert f"wrote {out}: {backbone} pair scorer" in result.stdout
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp-")] == []
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = image_batch()
    for first, second in PAIRS_AT_TWO_BATCH_SIZES:
        with torch.no_grad():
            expected = torch.sigmoid(net(images[first], images[second])).squeeze(1).numpy()
        (got,) = session.run(None, {"images1": images[first].numpy(), "images2": images[second].numpy()})
        assert got.shape == (len(first),)
        assert np.abs(got - expected).max() <= PROBABILITY_TOLERANCE, (got, expected)


def test_embedder_gives_the_predictors_embeddings_at_two_batch_sizes(exported):
    weights, net, out, result = exported(BACKBONES[0], "--embedder")  # synthetic check images: none given
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 6 synthetic images" in result.stdout
    assert printed_difference(result.stdout, "embeddings") <= EMBEDDING_TOLERANCE
    predictor = Siamese(model_path=str(weights), input_shape=SHAPE, cuda=False, verbose=False)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for count in (1, 3):
        expected = predictor.embed(IMAGES[:count]).numpy()
        (got,) = session.run(["embeddings"], {"images": image_batch()[:count].numpy()})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= EMBEDDING_TOLERANCE * np.abs(expected).max()


def test_deploy_example_scores_like_the_predictor_without_torch(exported, tmp_path):
    weights, net, out, result = exported(BACKBONES[0], "--check_images", *IMAGES)
    assert result.returncode == 0, result.stderr[-3000:]
    blocked = tmp_path / "no_torch"
    blocked.mkdir()
    (blocked / "torch.py").write_text('raise ImportError("torch is blocked: the example must run without it")\n')
    env = {**ENV, "PYTHONPATH": str(blocked)}
    proof = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert proof.returncode != 0 and "torch is blocked" in proof.stderr
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    script = tmp_path / "score.py"
    script.write_text(code)
    first, second = IMAGES[0], IMAGES[2]
    scored = subprocess.run([sys.executable, str(script), str(out), str(first), str(second)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert scored.returncode == 0, scored.stderr[-3000:]
    predictor = Siamese(model_path=str(weights), input_shape=SHAPE, cuda=False, verbose=False)
    expected = predictor.similarity(first, second)
    assert float(scored.stdout.split()[-1]) == pytest.approx(expected, abs=PROBABILITY_TOLERANCE)


def assert_single_line_error(result, *fragments):
    """export.py failed with exit code 1 and printed one line, `error: ...` holding every fragment."""
    assert_one_line_error(result, *fragments)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_weights_are_one_line(tmp_path):
    result = export(tmp_path / "none.pth", tmp_path / "model.onnx")
    assert_single_line_error(result, "none.pth", "no such weights file")
    assert list(tmp_path.iterdir()) == []


def test_weights_of_another_input_size_are_one_line(tmp_path):
    weights, _ = save_weights(BACKBONES[0], tmp_path)
    args = ["--model_path", weights, "--input_shape", 64, 64, "--out", tmp_path / "model.onnx"]
    result = run("export.py", *args, timeout=EXPORT_TIMEOUT)
    assert_single_line_error(result, str(weights), "fully_connect1.weight has shape")
    assert list(tmp_path.iterdir()) == [weights]


def test_out_in_a_missing_folder_is_one_line(tmp_path):
    result = export(tmp_path / "none.pth", tmp_path / "no" / "model.onnx")
    assert_single_line_error(result, "model.onnx", "no such folder")


def test_missing_extras_are_named_in_one_line(tmp_path):
    hidden = tmp_path / "no_onnxruntime"
    hidden.mkdir()
    (hidden / "onnxruntime.py").write_text('raise ImportError("No module named onnxruntime")\n')
    result = export(tmp_path / "none.pth", tmp_path / "model.onnx", env={**ENV, "PYTHONPATH": str(hidden)})
    assert_single_line_error(result, EXTRAS)
