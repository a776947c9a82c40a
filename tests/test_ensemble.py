"""tools.ensemble: independently trained conv4 weights merged into one network whose similarity is the mean of theirs,
in the original's weight format, taken by the predictor, evaluation and gallery like any weights."""
import json
import subprocess
import sys

import pytest
import torch
from helpers import ENV, ROOT

from nets.siamese import SiameseNetwork, backbone_of, flat_features, split_members
from siamese import Siamese
from tools.ensemble import main
from utils.images import preprocess

SHAPE = [32, 32]
IMAGES = [ROOT / "img" / name for name in ("alef_1.png", "alef_2.png", "bet_1.png")]  # real drawings
TOLERANCE = 1e-4  # on logits of a few units, fp32 sums in another order: far above any CPU's rounding


def trained_like(backbone, seed, folder, shape=SHAPE, crop_to_ink=True):
    """A random SiameseNetwork with batch-norm statistics as training leaves them and logits up to +-3 on IMAGES'
    pairs, saved with its settings file as training writes it; returns (path, the network in eval mode)."""
    torch.manual_seed(seed)
    net = SiameseNetwork(shape, backbone)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the identity defaults
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    net.eval()
    if shape == SHAPE:
        with torch.no_grad():  # a random head scores every pair about alike; spread them as training does
            spread = logits(net, IMAGES[:2], IMAGES[1:]) - net.fully_connect2.bias
            net.fully_connect2.weight.mul_(3 / spread.abs().max())
    path = folder / f"{backbone}_{seed}.pth"
    torch.save(net.state_dict(), path)
    settings = {"version": 1, "backbone": backbone, "input_shape": shape, "letterbox_image": False,
                "crop_to_ink": crop_to_ink, "threshold": 0.5}
    path.with_suffix(".json").write_text(json.dumps(settings))
    return path, net.eval()


def merge(*args):
    """Run `python -m tools.ensemble args` in-process -> (exit code, message it ended with or "")."""
    try:
        main([str(a) for a in args])
    except SystemExit as stop:
        return (stop.code if isinstance(stop.code, int) else 1), str(stop.code)
    return 0, ""


def logits(net, first, second):
    """The network's pair logits (N,) for the image paths `first` and `second`, prepared as the predictor does."""
    batch = [torch.stack([preprocess(path, SHAPE, crop_to_ink=True) for path in paths]) for paths in (first, second)]
    with torch.no_grad():
        return net(*batch).squeeze(1)


def test_merged_weights_score_the_mean_of_the_members_logits(tmp_path):
    members = [trained_like("conv4", seed, tmp_path) for seed in range(3)]
    out = tmp_path / "ensemble.pth"
    assert merge(*[path for path, _ in members], "--out", out) == (0, "")
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["backbone"] == "conv4x3" and settings["input_shape"] == SHAPE and settings["crop_to_ink"] is True
    state = torch.load(out, weights_only=True)
    assert backbone_of(state) == "conv4x3"
    assert list(state["fully_connect1.weight"].shape) == [512, flat_features(SHAPE, "conv4x3")] == [512, 3 * 64 * 4]
    assert list(state["fully_connect2.weight"].shape) == [1, 512]  # the original's head, shapes and keys
    predictor = Siamese(model_path=str(out), cuda=False, verbose=False)  # input size and framing from the .json
    assert predictor.input_shape == SHAPE and predictor.crop_to_ink
    first, second = [IMAGES[0], IMAGES[0], IMAGES[1]], [IMAGES[1], IMAGES[2], IMAGES[2]]
    expected = torch.stack([logits(net, first, second) for _, net in members]).mean(0)
    got = predictor.score_pairs(predictor.embed(first), predictor.embed(second), logits=True)
    assert torch.allclose(got, expected, atol=TOLERANCE), (got, expected)
    assert expected.std() > 0.1  # the three pairs differ: the check could fail


def test_an_ensemble_merged_again_counts_each_network_once(tmp_path):
    (a, net_a), (b, net_b), (c, net_c) = [trained_like("conv4", seed, tmp_path) for seed in range(3)]
    assert merge(a, b, "--out", tmp_path / "ab.pth")[0] == 0
    assert merge(tmp_path / "ab.pth", c, "--out", tmp_path / "abc.pth")[0] == 0
    merged = SiameseNetwork(SHAPE, "conv4x3").eval()
    merged.load_state_dict(torch.load(tmp_path / "abc.pth", weights_only=True))
    pairs = [IMAGES[0], IMAGES[1]], [IMAGES[2], IMAGES[2]]
    expected = (logits(net_a, *pairs) + logits(net_b, *pairs) + logits(net_c, *pairs)) / 3
    assert torch.allclose(logits(merged, *pairs), expected, atol=TOLERANCE)


def test_ensemble_names_read_back_as_members():
    assert split_members("conv4_96x3") == ("conv4_96", 3)
    assert split_members("conv4x1") == ("conv4x1", 1) and split_members("resnet18x2") == ("resnet18x2", 1)
    with pytest.raises(ValueError, match="unknown backbone 'resnet18x2'"):
        SiameseNetwork(SHAPE, "resnet18x2")


@pytest.mark.parametrize("problem", ["input size", "framing", "width", "backbone", "missing", "no settings"])
def test_members_that_cannot_merge_stop_with_one_line_naming_the_file(tmp_path, problem):
    good, _ = trained_like("conv4", 0, tmp_path)
    if problem == "input size":
        bad, _ = trained_like("conv4", 1, tmp_path, shape=[48, 48])
        expected = "input_shape [48, 48] against [32, 32]"
    elif problem == "framing":
        bad, _ = trained_like("conv4", 1, tmp_path, crop_to_ink=False)
        expected = "crop_to_ink False against True"
    elif problem == "width":
        bad, _ = trained_like("conv4_96", 1, tmp_path)
        expected = "backbone conv4_96 against conv4"
    elif problem == "backbone":
        bad, _ = trained_like("resnet18_layer3", 1, tmp_path)
        expected = "only conv4 networks merge"
    elif problem == "missing":
        bad, expected = tmp_path / "none.pth", "none.pth"
    else:
        bad, _ = trained_like("conv4", 1, tmp_path)
        bad.with_suffix(".json").unlink()
        expected = "no settings file beside it"
    out = tmp_path / "out.pth"
    code, message = merge(good, bad, "--out", out)
    assert code == 1 and message.startswith("error: ") and "\n" not in message
    assert expected in message and str(bad) in message, message
    assert not out.exists()


def test_the_command_line_needs_two_files_and_a_writable_out(tmp_path):
    good, _ = trained_like("conv4", 0, tmp_path)
    done = subprocess.run([sys.executable, "-m", "tools.ensemble", str(good), "--out", str(tmp_path / "o.pth")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "at least 2 weights files" in done.stderr
    code, message = merge(good, good, "--out", tmp_path / "no_folder" / "o.pth")
    assert code == 1 and "no such folder" in message
