"""torchvision's ResNet and MobileNetV3 convolutional feature extractors, without their pooling and classifier."""
from torch import nn
from torchvision import models

RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNetBackbone(nn.Module):
    """torchvision's resnet18 or resnet50 (`name`) up to `layer4`, at 1/32 of the input (rounded up).

    The parts keep torchvision's attribute names, so the state-dict keys are torchvision's without
    `fc.*` (`conv1.weight`, `layer1.0.conv1.weight`, ...) and ImageNet weights copy in by name.
    """

    def __init__(self, name):
        super().__init__()
        full = getattr(models, name)(weights=None)  # torchvision's initialisation; its avgpool and fc are dropped
        for part in RESNET_PARTS:
            setattr(self, part, getattr(full, part))

    def forward(self, x):
        for part in RESNET_PARTS:
            x = getattr(self, part)(x)
        return x

    def load_imagenet(self, state):
        """Copy every tensor of torchvision's resnet state dict `state` but the classifier `fc.*`; returns self.

        Raises RuntimeError (from `load_state_dict`) when `state` is not this ResNet's.
        """
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
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
