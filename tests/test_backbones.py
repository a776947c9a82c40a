"""Every backbone trains, saves, is recognised by its weights and predicts alike; those torchvision has ImageNet
weights for load its file."""
import copy
import os
import re
import urllib.request
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import TRAIN, make_subset, png, run
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.vgg import cfgs, make_layers

import train
from nets.siamese import BACKBONES, SiameseNetwork, backbone_of, flat_features
from siamese import Siamese
from utils.config import memory_problem
from utils.errors import WeightsError
from utils.images import preprocess
from utils.weights import IMAGENET_WEIGHTS_URLS, load_weights

SHAPE = [32, 32]
CPU = torch.device("cpu")
IMAGENET_BACKBONES = tuple(IMAGENET_WEIGHTS_URLS)  # all but conv4


def train_one_step(model):
    """One SGD step of `model` on a random pair batch (BCE on the logits); returns the step's loss."""
    images_1, images_2 = torch.rand(4, 3, *SHAPE), torch.rand(4, 3, *SHAPE)
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.binary_cross_entropy_with_logits(model.train()(images_1, images_2), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_step_saves_and_the_predictor_recognises_it(backbone, tmp_path):
    torch.manual_seed(0)
    model = SiameseNetwork(SHAPE, backbone)
    before = {k: v.clone() for k, v in model.named_parameters()}
    assert torch.isfinite(torch.tensor(train_one_step(model)))
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    first_conv = next(k for k in before if k.endswith("weight"))
    assert {first_conv, "fully_connect1.weight"} <= changed

    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    assert backbone_of(load_weights(str(path))) == backbone
    predictor = Siamese(model_path=str(path), input_shape=SHAPE, cuda=False, verbose=False)
    assert predictor.net.backbone == backbone
    images = [png(tmp_path / "a.png", seed=1), png(tmp_path / "b.png", seed=2)]
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(*[preprocess(p, SHAPE).unsqueeze(0) for p in images])).item()
    assert predictor.similarity(*images) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(WeightsError, match=r"fully_connect1.weight .*input_shape the weights were trained at"):
        Siamese(model_path=str(path), input_shape=[64, 64], cuda=False, verbose=False)


def test_resnet18_layer3_is_torchvisions_resnet18_up_to_layer3():
    torch.manual_seed(0)
    net = SiameseNetwork((64, 64), "resnet18_layer3").eval()
    full = models.resnet18(weights=None).eval()
    kept = {k: v for k, v in full.state_dict().items() if not k.startswith(("layer4.", "fc."))}
    assert set(net.encoder.state_dict()) == set(kept)  # torchvision's keys, under resnet18_layer3.*
    net.encoder.load_imagenet(full.state_dict())
    trunk = create_feature_extractor(full, {"layer3": "features"})
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = trunk(images)["features"]
        assert expected.shape == (3, 256, 4, 4)  # a 4x4 map of a 64x64 drawing, where resnet18 leaves 2x2
        assert torch.allclose(net.embed(images), expected.flatten(1), atol=1e-5)
    assert flat_features((64, 64), "resnet18_layer3") == 4096 and net.fully_connect1.in_features == 4096


@pytest.mark.parametrize("backbone, channels, weights", [("conv4", 64, 112_832), ("conv4_96", 96, 252_192),
                                                        ("conv4_128", 128, 446_848)])
def test_conv4_is_four_pooled_blocks_and_trains_from_scratch_only(backbone, channels, weights, capsys):
    net = SiameseNetwork((48, 40), backbone)
    convolutions = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convolutions] == \
        [(3, channels, (3, 3))] + [(channels, channels, (3, 3))] * 3
    assert sum(p.numel() for p in net.encoder.parameters()) == weights
    with torch.no_grad():  # four 2x2 max-pools round down: 48 x 40 -> 3 x 2
        assert net.eval().encoder(torch.zeros(1, 3, 48, 40)).shape == (1, channels, 3, 2)
    assert flat_features((48, 40), backbone) == channels * 6 == net.fully_connect1.in_features
    assert backbone not in IMAGENET_WEIGHTS_URLS
    with pytest.raises(SystemExit) as refused:
        train.parse_train_config(["--backbone", backbone, "--input_shape", "32", "32"])
    assert refused.value.code == 2
    assert f"backbone {backbone} has no ImageNet weights: set pretrained = False" in capsys.readouterr().err
    config, _ = train.parse_train_config(["--backbone", backbone, "--pretrained", "False", "--Cuda", "False"])
    assert config.optimizer_type == "adam"  # from scratch: auto picks Adam



def test_conv4_pools_before_its_relu_as_the_same_function_and_gradients():
    # The textbook order is conv, batch norm, ReLU, pool; pooling first is cheaper and must compute the same
    torch.manual_seed(0)
    net = SiameseNetwork((32, 32), "conv4").train()
    textbook = []
    for i in range(0, 16, 4):
        conv, norm = copy.deepcopy(net.encoder.features[i]), copy.deepcopy(net.encoder.features[i + 1])
        textbook += [conv, norm, torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    textbook = torch.nn.Sequential(*textbook).train()
    images = torch.rand(8, 3, 32, 32)
    ours, theirs = net.encoder(images), textbook(images)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    (ours * torch.arange(ours.numel()).reshape(ours.shape)).sum().backward()
    (theirs * torch.arange(theirs.numel()).reshape(theirs.shape)).sum().backward()
    for i in (0, 1, 12, 13):  # the first and last convolution and batch norm
        for mine, other in zip(net.encoder.features[i].parameters(), textbook[i].parameters()):
            torch.testing.assert_close(mine.grad, other.grad, rtol=1e-4, atol=1e-4)
    assert [k for k in net.state_dict() if k.startswith("conv4.features.5.")][:2] == \
        ["conv4.features.5.weight", "conv4.features.5.bias"]

def test_unknown_weights_are_named_as_not_siamese(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other.pth: not Siamese vgg16 weights \(missing 30 keys"):
        Siamese(model_path=str(tmp_path / "other.pth"), input_shape=SHAPE, cuda=False, verbose=False)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_flat_features_follow_the_backbone_and_input_size(backbone):
    shape = (33, 70)  # not multiples of 32: VGG16's pools round down, the strided convolutions round up
    with torch.no_grad():
        emb = SiameseNetwork(shape, backbone).eval().embed(torch.zeros(1, 3, *shape))
    assert emb.shape == (1, flat_features(shape, backbone))


def torchvision_imagenet_state(backbone):
    """A state dict as torchvision's ImageNet file for `backbone` holds, with random weights."""
    if backbone.startswith("vgg"):  # the classifier (120M parameters, seconds to build) is left out: loading skips it
        features = make_layers(cfgs["D"], batch_norm=backbone == "vgg16_bn")
        return {f"features.{k}": v for k, v in features.state_dict().items()}
    return getattr(models, torchvision_name(backbone))(weights=None).state_dict()


def torchvision_name(backbone):
    """The torchvision model whose ImageNet file `backbone` loads: resnet18_layer3 takes resnet18's."""
    return backbone.removesuffix("_layer3")


def pretrained_config(backbone):
    config, _ = train.parse_train_config(["--backbone", backbone, "--input_shape", *map(str, SHAPE), "--Cuda", "False"])
    assert config.pretrained
    return config


@pytest.mark.parametrize("backbone", IMAGENET_BACKBONES)
def test_imagenet_weights_load_from_model_data_under_torchvisions_name(backbone, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = os.path.basename(IMAGENET_WEIGHTS_URLS[backbone])
    assert re.fullmatch(rf"{torchvision_name(backbone)}-[0-9a-f]{{8}}\.pth", name)
    (tmp_path / "model_data").mkdir()
    state = torchvision_imagenet_state(backbone)
    torch.save(state, tmp_path / "model_data" / name)
    model = train.build_model(pretrained_config(backbone), print)
    copied = model.encoder.state_dict()
    assert copied.keys() <= state.keys()
    assert all(torch.equal(value, state[key]) for key, value in copied.items())

    torch.save({"features.0.weight": torch.zeros(3, 3)}, tmp_path / "model_data" / name)
    with pytest.raises(WeightsError) as wrong:
        train.build_model(pretrained_config(backbone), print)
    assert str(wrong.value).startswith(f"model_data/{name}: not torchvision's ImageNet {backbone} weights")
    assert "\n" not in str(wrong.value)


@pytest.mark.parametrize("backbone", IMAGENET_BACKBONES)
def test_missing_imagenet_weights_offline_name_the_file(backbone, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead_proxy = "http://127.0.0.1:9"  # nothing listens there: every download fails at once, as offline
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": dead_proxy, "https": dead_proxy}))
    monkeypatch.setattr(urllib.request, "_opener", opener)  # what urlopen, and so torch.hub, uses
    name = os.path.basename(IMAGENET_WEIGHTS_URLS[backbone])
    with pytest.raises(WeightsError) as offline:
        train.build_model(pretrained_config(backbone), print)
    message = str(offline.value)
    assert f"cannot load ImageNet weights {name}" in message and f"put {name} at model_data/{name}" in message
    assert "\n" not in message and not (tmp_path / "model_data" / name).exists()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_memory_check_refuses_only_the_hopeless(backbone):
    config = SimpleNamespace(input_shape=[64, 64], batch_size=8, device=torch.device("cpu"), backbone=backbone,
                             pairing="items")
    assert memory_problem(config) is None
    config.input_shape, config.batch_size = [100000, 32], 256
    assert "lower input_shape or batch_size" in memory_problem(config)


def test_train_py_runs_resnet18_end_to_end_and_its_resume_keeps_the_backbone(small1, tmp_path, capsys):
    data = make_subset(small1, tmp_path / "dataset", alphabets=1, characters=4, drawers=4)
    save_dir = tmp_path / "logs"
    result = run("train.py", "--dataset_path", data, "--train_ratio", 0.5, "--Epoch", 1, "--save_dir", save_dir,
                 *TRAIN, "--backbone", "resnet18", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    weights = load_weights(str(save_dir / "best_epoch_weights.pth"))
    assert "resnet18.layer4.1.conv2.weight" in weights and backbone_of(weights) == "resnet18"
    assert Siamese(model_path=str(save_dir / "best_epoch_weights.pth"), input_shape=SHAPE, cuda=False,
                   verbose=False).net.backbone == "resnet18"
    with pytest.raises(SystemExit) as stop:
        train.parse_train_config(["--resume", str(save_dir / "last.ckpt"), "--Epoch", "3", "--backbone", "vgg16"])
    assert stop.value.code == 2 and "--backbone vgg16 differs from resnet18" in capsys.readouterr().err


@pytest.mark.parametrize("preset, backbone, side, optimizer", [
    ("omniglot_scratch.py", "conv4_96", 48, {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),  # SGD
    ("omniglot_resnet18.py", "resnet18", 64, {"betas": (0.9, 0.999), "weight_decay": 0.0})])  # Adam, from auto
def test_the_omniglot_presets_train_their_backbone_and_the_predictor_reads_it_back(preset, backbone, side, optimizer,
                                                                                   small1, tmp_path):
    data = make_subset(small1, tmp_path / "dataset", alphabets=2, characters=4, drawers=6)
    save_dir = tmp_path / "logs"
    result = run("train.py", f"config/{preset}", "--dataset_path", data, "--save_dir", save_dir, "--Epoch", 1,
                 "--batch_size", 8, "--images_per_class", 2, "--train_ratio", 0.75, "--Cuda", "False", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    predictor = Siamese(model_path=str(save_dir / "last_epoch_weights.pth"), cuda=False, verbose=False)
    assert predictor.net.backbone == backbone and predictor.input_shape == [side, side]  # from the settings file
    group = torch.load(save_dir / "last.ckpt", weights_only=True)["optimizer"]["param_groups"][0]
    assert {name: group[name] for name in optimizer} == optimizer


def test_bench_prints_a_row_per_backbone(omniglot_subset, capsys):
    import bench

    assert bench.parse_backbones("all") == BACKBONES
    args = bench.parse_args(["--backbones", "resnet18,mobilenet_v3_large", "--dataset", str(omniglot_subset),
                             "--input_shape", "32", "32", "--batch_size", "2", "--steps", "1", "--device", "cpu"])
    bench.main(args)
    out = capsys.readouterr().out
    for backbone in ("resnet18", "mobilenet_v3_large"):
        row = re.search(rf"^\| {backbone} \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+) MiB \|$", out, re.M)
        assert row and all(float(x) > 0 for x in row.groups()), out
    assert "| vgg16 |" not in out
    with pytest.raises(SystemExit):
        bench.parse_args(["--backbones", "resnet"])
