"""The network: original weight format, output size, ImageNet weight loading."""
import pytest
import torch
from helpers import direct_probability, original_format_state_dict
from torchvision.models import vgg16

from nets.siamese import SiameseNetwork, backbone_of, flat_features
from utils.weights import load_imagenet_weights
from utils.errors import WeightsError


def test_state_dict_keys_match_the_original_format():
    keys = set(SiameseNetwork((64, 64)).state_dict())
    assert keys == set(original_format_state_dict((64, 64)))


def test_original_weights_give_the_same_outputs():
    state = original_format_state_dict((64, 96))
    model = SiameseNetwork((64, 96))
    model.load_state_dict(state)  # strict: every key, every shape
    model.eval()
    images_1, images_2 = torch.rand(3, 3, 64, 96), torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        ours = torch.sigmoid(model(images_1, images_2))
        reference = direct_probability(state, images_1, images_2)
        separate = torch.sigmoid(model.score(model.embed(images_1), model.embed(images_2)))
    assert ours.shape == (3, 1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(separate, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, flat", [((105, 105), 4608), ((32, 32), 512), ((64, 100), 512 * 2 * 3)])
def test_flat_feature_size(shape, flat):
    assert flat_features(shape) == flat
    with torch.no_grad():
        assert SiameseNetwork(shape).embed(torch.zeros(1, 3, *shape)).shape == (1, flat)


def test_input_below_32_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        SiameseNetwork((31, 64))


def test_imagenet_weights_load_from_model_data(tmp_path):
    imagenet = vgg16(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "vgg16-397923af.pth")
    model = SiameseNetwork((32, 32))
    model.vgg.load_imagenet(load_imagenet_weights(str(tmp_path)))
    for key, value in model.vgg.features.state_dict().items():
        assert torch.equal(value, imagenet[f"features.{key}"])


def test_imagenet_weights_download_into_model_data(tmp_path):
    source = tmp_path / "mirror" / "vgg16-397923af.pth"
    source.parent.mkdir()
    imagenet = vgg16(weights=None).state_dict()
    torch.save(imagenet, source)
    model_dir = tmp_path / "model_data"
    backbone = SiameseNetwork((32, 32)).vgg.load_imagenet(load_imagenet_weights(str(model_dir), url=source.as_uri()))
    assert (model_dir / "vgg16-397923af.pth").is_file()
    assert torch.equal(backbone.features[0].weight, imagenet["features.0.weight"])


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path):
    url = (tmp_path / "nowhere" / "vgg16-397923af.pth").as_uri()
    with pytest.raises(WeightsError, match=r"put vgg16-397923af.pth at .*model_data.* or set pretrained = False"):
        load_imagenet_weights(str(tmp_path / "model_data"), url=url)


def test_vgg16_bn_backbone_loads_torchvisions_bn_weights_and_is_recognised(tmp_path):
    from torchvision.models import vgg16_bn

    imagenet = vgg16_bn(weights=None).state_dict()
    model = SiameseNetwork((32, 32), "vgg16_bn")
    model.vgg.load_imagenet(imagenet)
    for key, value in model.vgg.features.state_dict().items():
        assert torch.equal(value, imagenet[f"features.{key}"])
    assert backbone_of(model.state_dict()) == "vgg16_bn"
    assert backbone_of(SiameseNetwork((32, 32)).state_dict()) == "vgg16"
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        SiameseNetwork((32, 32), "resnet")


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_the_multiplied_out_head_gives_the_two_layer_heads_logits_and_gradients(dtype, tolerance):
    torch.manual_seed(0)
    net = SiameseNetwork((64, 64), "resnet18").to(dtype)
    emb1, emb2 = (torch.randn(50, 2048, dtype=dtype, requires_grad=True) for _ in range(2))
    upstream = torch.randn(50, 1, dtype=dtype)
    results = []
    for head in (net.score, lambda a, b: net.fully_connect2(net.fully_connect1(torch.abs(a - b)))):
        net.zero_grad()
        emb1.grad = emb2.grad = None
        logits = head(emb1, emb2)
        (logits * upstream).sum().backward()
        results.append([logits, emb1.grad, emb2.grad] + [p.grad for p in net.fully_connect1.parameters()]
                       + [p.grad for p in net.fully_connect2.parameters()])
    for ours, two_layers in zip(*results):
        scale = two_layers.abs().max()
        assert (ours - two_layers).abs().max() <= tolerance * scale


def test_scoring_pairs_costs_about_two_flops_per_feature_not_a_thousand():
    from torch.utils.flop_counter import FlopCounterMode

    net, pairs, flat = SiameseNetwork((64, 64), "resnet18"), 4096, 2048
    emb1, emb2 = torch.randn(pairs, flat), torch.randn(pairs, flat)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.score(emb1, emb2)
    # the pairs' matrix-vector product plus multiplying the two layers out once; the two-layer form: 2 * P * F * 512
    assert counter.get_total_flops() <= 2 * pairs * flat + 2 * 512 * flat + 2 * 512


def test_feature_dropout_drops_that_share_of_the_difference_in_training_only():
    torch.manual_seed(0)
    net = SiameseNetwork((32, 32), "resnet18", feature_dropout=0.25)
    assert set(net.state_dict()) == set(SiameseNetwork((32, 32), "resnet18").state_dict())  # no weights of its own
    with torch.no_grad():  # the head then sums the difference's features: the logit counts the ones kept
        net.fully_connect1.weight.copy_(torch.eye(512))
        net.fully_connect1.bias.zero_()
        net.fully_connect2.weight.fill_(1.0)
        net.fully_connect2.bias.zero_()
    emb1, emb2 = torch.ones(400, 512), torch.zeros(400, 512)
    kept = net.train().score(emb1, emb2) * (1 - 0.25)  # dropout scales what it keeps by 1 / (1 - p)
    assert torch.allclose(kept, kept.round(), atol=1e-3)
    assert abs(kept.mean().item() / 512 - 0.75) < 0.01 and kept.std().item() > 1  # each pair its own mask
    torch.testing.assert_close(net.eval().score(emb1, emb2), torch.full((400, 1), 512.0))
