"""The Siamese network: a shared VGG16 backbone and a head on |f1 - f2|."""
import torch
from torch import nn

from nets.vgg import VGG16Backbone, load_imagenet_features


def flat_features(input_shape):
    """Length of the flattened VGG16 feature map for an (H, W) input: 512 * (H//32) * (W//32)."""
    height, width = input_shape
    return 512 * (height // 32) * (width // 32)


class Siamese(nn.Module):
    """Scores a pair of image batches; one logit per pair (sigmoid gives the similarity).

    State-dict keys: `vgg.features.<i>.*`, `fully_connect1.*`, `fully_connect2.*`, the same as
    the original repository, so its weights load here unchanged and ours load there.
    """

    def __init__(self, input_shape=(105, 105), pretrained=False, model_dir="model_data"):
        super().__init__()
        if min(input_shape) < 32:
            raise ValueError(f"input_shape {list(input_shape)} is too small: VGG16 needs at least 32x32")
        self.vgg = VGG16Backbone()
        if pretrained:
            load_imagenet_features(self.vgg, model_dir)
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
