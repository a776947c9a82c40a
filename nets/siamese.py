"""The Siamese network: a shared backbone (VGG16 by default) and a head on |f1 - f2|."""
import re

import torch
import torch.nn.functional as F
from torch import nn

from nets.backbones import Conv4Backbone, MobileNetBackbone, ResNetBackbone
from nets.vgg import VGG16Backbone

MIN_SIDE = 32  # most backbones halve the input five times: below 32 VGG16's map is empty, the others' one padded pixel
CONV4_CHANNELS = {"conv4": 64, "conv4_96": 96, "conv4_128": 128}  # the four-block network's widths, a name each
BACKBONES = ("vgg16", "vgg16_bn", "resnet18", "resnet18_layer3", "resnet50", "mobilenet_v3_large", *CONV4_CHANNELS)
FEATURE_CHANNELS = {"vgg16": 512, "vgg16_bn": 512, "resnet18": 512, "resnet18_layer3": 256, "resnet50": 2048,
                    "mobilenet_v3_large": 960, **CONV4_CHANNELS}
FEATURE_STRIDE = {"resnet18_layer3": 16, **dict.fromkeys(CONV4_CHANNELS, 16)}  # the others' maps are 1/32 of the input
POOLED = ("vgg16", "vgg16_bn", *CONV4_CHANNELS)  # halve by max-pools, rounding down; the others by strided convolutions


def split_members(backbone):
    """A backbone name -> (the name of one member, members): an ensemble of k conv4s in one network is named
    "<conv4 name>x<k>" ("conv4_96x3" -> ("conv4_96", 3)); any other name -> (name, 1)."""
    match = re.fullmatch(r"(conv4(?:_\d+)?)x([2-9]|[1-9]\d+)", backbone)
    return (match[1], int(match[2])) if match and match[1] in CONV4_CHANNELS else (backbone, 1)


def is_backbone(name):
    """True for a name in BACKBONES or an ensemble of one of the conv4s in one network (`split_members`)."""
    return isinstance(name, str) and split_members(name)[0] in BACKBONES


def check_input_shape(input_shape, backbone=None):
    """Raise ValueError unless `input_shape` is [height, width] with both sides at least 32 pixels.

    `backbone` (a name in BACKBONES, or None before it is known) is named in the message.
    """
    if len(input_shape) != 2 or min(input_shape) < MIN_SIDE:
        raise ValueError(f"input_shape {list(input_shape)}: each side must be at least {MIN_SIDE} "
                         f"for {backbone or 'every backbone'}")


def module_name(backbone):
    """The SiameseNetwork attribute holding `backbone`: "vgg" for both VGG16s (the original's keys), else its name."""
    return "vgg" if backbone.startswith("vgg") else backbone


def backbone_of(state):
    """The backbone name whose weights the state dict `state` holds, read from its keys alone.

    A key's first name is the backbone's attribute (`resnet18.conv1.weight`); `vgg.*` is "vgg16_bn" when it
    holds batch-norm statistics, else "vgg16" (the original's), which is also the answer for unknown keys,
    so that loading them names the keys missing.
    """
    names = {key.split(".")[0] for key in state}
    # VGG16s sit under "vgg", never their name
    named = [backbone for backbone in BACKBONES if backbone in names] or sorted(filter(is_backbone, names))
    if named:
        return named[0]
    return "vgg16_bn" if any(key.endswith("running_mean") for key in state) else "vgg16"


def flat_features(input_shape, backbone="vgg16"):
    """Length of `backbone`'s flattened feature map for an (H, W) input: channels * (H/32) * (W/32) (H/16 and W/16
    for resnet18_layer3 and the conv4s; times the members of a conv4 ensemble).

    The max-pools of VGG16 and conv4 round each halving down (512 * (H//32) * (W//32)); the others' padded strided
    convolutions round it up.
    """
    height, width = input_shape
    backbone, members = split_members(backbone)
    stride, channels = FEATURE_STRIDE.get(backbone, 32), FEATURE_CHANNELS[backbone] * members
    if backbone in POOLED:
        return channels * (height // stride) * (width // stride)
    return channels * -(-height // stride) * -(-width // stride)


def make_backbone(backbone):
    """A `backbone` feature extractor (`is_backbone`) with random weights; all but the conv4s have a
    `load_imagenet(state)` method."""
    if backbone.startswith("vgg"):
        return VGG16Backbone(batch_norm=backbone == "vgg16_bn")
    if backbone.startswith("resnet"):
        return ResNetBackbone(backbone)
    base, members = split_members(backbone)
    if base in CONV4_CHANNELS:
        return Conv4Backbone(CONV4_CHANNELS[base], members)
    return MobileNetBackbone(backbone)



def merge_members(states, backbones):
    """State dicts of conv4 Siamese networks (or conv4 ensembles), `backbones` their names (all one conv4 width)
    -> (the ensemble's backbone name, its state dict): one network whose logit for a pair is the mean of the
    members' logits (an ensemble of k members counts k times).

    Each layer's members sit side by side (`Conv4Backbone(members=...)`); the head's two linear layers keep the
    original's keys and shapes: the first holds the members' multiplied-out heads in its row 0, the second picks it.
    Raises ValueError when a backbone is not a conv4 or the widths differ.
    """
    parts = [split_members(backbone) for backbone in backbones]
    bases = {base for base, _ in parts}
    if len(bases) != 1 or not bases <= set(CONV4_CHANNELS):
        raise ValueError(f"only conv4 networks of one width merge, not {', '.join(backbones)}")
    base, total = bases.pop(), sum(members for _, members in parts)
    name = module_name(base) + f"x{total}"
    merged = {}
    for key, value in states[0].items():
        if not key.startswith("fully_connect"):
            own = key.split(".", 1)[1]
            tensors = [state[f"{backbone}.{own}"] for state, backbone in zip(states, backbones)]
            # a layer's members are blocks of its output channels; a count (num_batches_tracked) is the first's
            merged[f"{name}.{own}"] = torch.cat(tensors) if value.dim() else tensors[0].clone()
    weights, biases = [], []
    for state, (_, members) in zip(states, parts):
        first, second = state["fully_connect1.weight"], state["fully_connect2.weight"]
        weights.append(members / total * (second @ first))
        biases.append(members / total * (second @ state["fully_connect1.bias"] + state["fully_connect2.bias"]))
    head, hidden = torch.cat(weights, 1), len(first)
    merged["fully_connect1.weight"] = torch.cat([head, head.new_zeros(hidden - 1, head.shape[1])])
    merged["fully_connect1.bias"] = torch.cat([sum(biases), head.new_zeros(hidden - 1)])
    merged["fully_connect2.weight"] = torch.cat([head.new_ones(1, 1), head.new_zeros(1, hidden - 1)], 1)
    merged["fully_connect2.bias"] = head.new_zeros(1)
    return name, merged

class SiameseNetwork(nn.Module):
    """Scores a pair of image batches; one logit per pair (sigmoid gives the similarity).

    State-dict keys for `backbone` "vgg16": `vgg.features.<i>.*`, `fully_connect1.*`, `fully_connect2.*`,
    the same as the original repository, so its weights load here unchanged and ours load there.
    "vgg16_bn" adds batch norms (other feature indices, so those weights are ours alone); torchvision's
    "resnet18", "resnet18_layer3", "resnet50", "mobilenet_v3_large" and the small "conv4"s sit under an attribute of
    their own name (`resnet18.layer1.0.conv1.weight`, `conv4.features.0.weight`, ...). `encoder` is the backbone
    module whichever it is.
    `feature_dropout` zeroes that share of each pair's |f1 - f2| in training mode only; it holds no weights.
    """

    def __init__(self, input_shape=(105, 105), backbone="vgg16", feature_dropout=0.0):
        super().__init__()
        if not is_backbone(backbone):
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)} (or a conv4 "
                             f"ensemble, conv4_96x3)")
        check_input_shape(input_shape, backbone)
        self.backbone = backbone
        self.add_module(module_name(backbone), make_backbone(backbone))
        self.fully_connect1 = nn.Linear(flat_features(input_shape, backbone), 512)
        self.fully_connect2 = nn.Linear(512, 1)
        self.feature_dropout = feature_dropout

    @property
    def encoder(self):
        """The backbone module: `self.vgg`, or the attribute of the backbone's name (`self.resnet18`, ...)."""
        return getattr(self, module_name(self.backbone))

    def embed(self, images):
        """(N, 3, H, W) float images in [0, 1] -> (N, flat) flattened backbone features."""
        return torch.flatten(self.encoder(images), 1)

    def head(self):
        """(w, b): the head's two linear layers multiplied out, w (flat, 1) and b (1,), so that the logit of a pair is
        |f1 - f2| @ w + b. No non-linearity sits between the layers, so this is the same function with the same
        gradients; it costs 2 * flat multiply-adds a pair instead of 2 * flat * 512."""
        w = (self.fully_connect2.weight @ self.fully_connect1.weight).t()
        return w, self.fully_connect2(self.fully_connect1.bias)

    def score(self, emb1, emb2):
        """Two (N, flat) embeddings -> (N, 1) logits; the head alone, no backbone."""
        w, b = self.head()
        difference = torch.abs(emb1 - emb2)
        if self.training and self.feature_dropout:
            difference = F.dropout(difference, self.feature_dropout)
        return torch.addmm(b, difference, w)

    def forward(self, images1, images2=None, pairs=None, with_embeddings=False):
        """Two (N, 3, H, W) batches -> (N, 1) logits of the pairs (images1[i], images2[i]); both go through
        the backbone in one call. Or one batch and `pairs`, a (2, P) index tensor -> (P, 1) logits of the
        pairs (images1[pairs[0, k]], images1[pairs[1, k]]), each image through the backbone once; with
        `with_embeddings`, (logits, the batch's (N, flat) embeddings) for a loss on the embeddings too."""
        if images2 is None:
            emb = self.embed(images1)
            # index_select, not emb[pairs[0]]: its backward adds rows in one pass, 4x faster than indexing's on a CPU
            logits = self.score(emb.index_select(0, pairs[0]), emb.index_select(0, pairs[1]))
            return (logits, emb) if with_embeddings else logits
        emb = self.embed(torch.cat([images1, images2]))
        count = images1.shape[0]  # a slice, not chunk(2): traced for export, the batch size stays free
        return self.score(emb[:count], emb[count:])
