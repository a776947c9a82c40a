"""VGG16 convolutional backbone; ImageNet weights are copied in from a torchvision state dict."""
from torch import nn
from torchvision.models.vgg import cfgs, make_layers


class VGG16Backbone(nn.Module):
    """The 13 conv layers and 5 max-pools of VGG16, kept as `self.features`; `batch_norm` adds torchvision's
    vgg16_bn batch norms after each conv.

    The attribute name matters: a Siamese network holding this as `vgg` has the state-dict
    keys `vgg.features.<i>.weight|bias` that the original repository's weights use.
    """

    def __init__(self, batch_norm=False):
        super().__init__()
        # only the conv part: building all of vgg16 peaks at 1 GB more
        self.features = make_layers(cfgs["D"], batch_norm=batch_norm)
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.features(x)

    def load_imagenet(self, state):
        """Copy the `features.*` tensors of torchvision's vgg16 (or vgg16_bn) state dict into this backbone.

        Raises RuntimeError (from `load_state_dict`) when `state` is not VGG16's; returns self.
        """
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(features)
        return self
