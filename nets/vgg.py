"""VGG16 convolutional backbone, optionally with torchvision's ImageNet weights."""
import os

import torch
from torch import nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs, make_layers

from utils.checkpoint import WeightsError

IMAGENET_WEIGHTS_URL = VGG16_Weights.IMAGENET1K_V1.url  # .../vgg16-397923af.pth
IMAGENET_WEIGHTS_FILE = os.path.basename(IMAGENET_WEIGHTS_URL)


class VGG16Backbone(nn.Module):
    """The 13 conv layers and 5 max-pools of VGG16 (no batch norm), kept as `self.features`.

    The attribute name matters: a Siamese network holding this as `vgg` has the state-dict
    keys `vgg.features.<i>.weight|bias` that the original repository's weights use.
    """

    def __init__(self):
        super().__init__()
        self.features = make_layers(cfgs["D"])  # only the conv part: building all of vgg16 peaks at 1 GB more
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.features(x)


def load_imagenet_features(backbone, model_dir="model_data", url=IMAGENET_WEIGHTS_URL):
    """Copy ImageNet weights into `backbone.features`.

    Looks for the torchvision file in `model_dir` first, downloads it there through torch's
    hub machinery second, and raises a WeightsError saying where to put it third.
    """
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=model_dir, map_location="cpu", progress=True, weights_only=True
        )
    except Exception as e:  # urllib, hash and unpickling errors all mean the same to the user
        target = os.path.join(model_dir, os.path.basename(url))
        raise WeightsError(
            f"cannot load ImageNet VGG16 weights ({type(e).__name__}: {e}); put {os.path.basename(url)} "
            f"at {target} (from {url}) or set pretrained = False"
        ) from None
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    backbone.features.load_state_dict(features)
    return backbone
