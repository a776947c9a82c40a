"""torchvision's ResNet and MobileNetV3 convolutional feature extractors, without their pooling and classifier, and the
few-shot literature's small four-block network."""
from torch import nn
from torchvision import models

RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNetBackbone(nn.Module):
    """torchvision's resnet18 or resnet50 (`name`) up to `layer4`, at 1/32 of the input (rounded up); "resnet18_layer3"
    stops after `layer3`: 256 channels at 1/16, a 4x4 map of a 64x64 drawing, a quarter of resnet18's weights.

    The parts keep torchvision's attribute names, so the state-dict keys are torchvision's without
    `fc.*` (`conv1.weight`, `layer1.0.conv1.weight`, ...) and ImageNet weights copy in by name.
    """

    def __init__(self, name):
        super().__init__()
        torchvision_name, _, last = name.partition("_")
        self.parts = RESNET_PARTS[:RESNET_PARTS.index(last or "layer4") + 1]
        full = getattr(models, torchvision_name)(weights=None)  # torchvision's initialisation; the rest is dropped
        for part in self.parts:
            setattr(self, part, getattr(full, part))

    def forward(self, x):
        for part in self.parts:
            x = getattr(self, part)(x)
        return x

    def load_imagenet(self, state):
        """Copy the tensors of torchvision's resnet state dict `state` that this backbone keeps (not the classifier
        `fc.*`, nor `layer4.*` when it stops at layer3); returns self.

        Raises RuntimeError (from `load_state_dict`) when `state` is not this ResNet's.
        """
        self.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in self.parts})
        return self


class MobileNetBackbone(nn.Module):
    """torchvision's mobilenet_v3_large `features` (its last conv: 960 channels at 1/32 of the input, rounded up).

    State-dict keys `features.<i>.*`, as torchvision's.
    """

    def __init__(self, name="mobilenet_v3_large"):
        super().__init__()
        self.features = getattr(models, name)(weights=None).features

    def forward(self, x):
        return self.features(x)

    def load_imagenet(self, state):
        """Copy the `features.*` tensors of torchvision's mobilenet_v3_large state dict `state`; returns self.

        Raises RuntimeError (from `load_state_dict`) when `state` is not this MobileNet's.
        """
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        return self


class Conv4Backbone(nn.Module):
    """Four blocks of a 3x3 convolution, batch norm, ReLU and a 2x2 max-pool, `channels` each (64: the small network
    of the few-shot literature, Vinyals et al. 2016, Snell et al. 2017, 113 k weights), at 1/16 of the input (rounded
    down). No ImageNet weights exist for it: it trains from scratch.

    `members` > 1 holds that many such networks side by side (an ensemble in one network): member k's channels are
    the k-th block of `channels` in every layer, its later convolutions see only its own (grouped convolutions).

    State-dict keys `features.<i>.*`, the convolutions at 0, 4, 8 and 12, their batch norms at 1, 5, 9 and 13.
    """

    def __init__(self, channels=64, members=1):
        super().__init__()
        layers, width = [], channels * members
        for inputs, groups in ((3, 1), (width, members), (width, members), (width, members)):
            # pool, then ReLU: the same function as ReLU, then pool (both keep order), on a quarter of the values
            layers += [nn.Conv2d(inputs, width, 3, padding=1, bias=False, groups=groups), nn.BatchNorm2d(width),
                       nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)
