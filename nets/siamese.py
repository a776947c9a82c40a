"""The Siamese network: a shared VGG16 backbone and a head on |f1 - f2|."""
import torch
from torch import nn

from nets.vgg import VGG16Backbone

MIN_SIDE = 32  # VGG16 halves the input five times
BACKBONES = ("vgg16", "vgg16_bn")


def check_input_shape(input_shape):
    """Raise ValueError unless `input_shape` is [height, width] with both sides at least 32 pixels."""
    if len(input_shape) != 2 or min(input_shape) < MIN_SIDE:
        raise ValueError(f"input_shape {list(input_shape)}: each side must be at least {MIN_SIDE} for VGG16")


def backbone_of(state):
    """"vgg16_bn" when a state dict holds batch-norm statistics, else "vgg16" (the original's)."""
    return "vgg16_bn" if any(key.endswith("running_mean") for key in state) else "vgg16"


def flat_features(input_shape):
    """Length of the flattened VGG16 feature map for an (H, W) input: 512 * (H//32) * (W//32)."""
    height, width = input_shape
    return 512 * (height // 32) * (width // 32)


class SiameseNetwork(nn.Module):
    """Scores a pair of image batches; one logit per pair (sigmoid gives the similarity).

    State-dict keys: `vgg.features.<i>.*`, `fully_connect1.*`, `fully_connect2.*`, the same as
    the original repository, so its weights load here unchanged and ours load there. `backbone`
    "vgg16_bn" adds batch norms (other feature indices, so those weights are ours alone).
    """

    def __init__(self, input_shape=(105, 105), backbone="vgg16"):
        super().__init__()
        check_input_shape(input_shape)
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.backbone = backbone
        self.vgg = VGG16Backbone(batch_norm=backbone == "vgg16_bn")
        self.fully_connect1 = nn.Linear(flat_features(input_shape), 512)
        self.fully_connect2 = nn.Linear(512, 1)

    def embed(self, images):
        """(N, 3, H, W) float images in [0, 1] -> (N, flat) flattened backbone features."""
        return torch.flatten(self.vgg(images), 1)

    def score(self, emb1, emb2):
        """Two (N, flat) embeddings -> (N, 1) logits; the head alone, no backbone."""
        return self.fully_connect2(self.fully_connect1(torch.abs(emb1 - emb2)))

    def forward(self, images1, images2):
        """Two (N, 3, H, W) batches -> (N, 1) logits; both go through the backbone in one call."""
        emb1, emb2 = self.embed(torch.cat([images1, images2])).chunk(2)
        return self.score(emb1, emb2)
