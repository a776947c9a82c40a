"""Reference helpers for tests: weights in the original format and a functional forward pass."""
import torch
import torch.nn.functional as F

VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def original_format_state_dict(input_shape, seed=0):
    """Random weights under exactly the original repository's keys, built without our classes."""
    generator = torch.Generator().manual_seed(seed)
    state, index, channels = {}, 0, 3
    for item in VGG16_CONFIG:
        if item == "M":
            index += 1
            continue
        state[f"vgg.features.{index}.weight"] = torch.randn(item, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
        state[f"vgg.features.{index}.bias"] = torch.randn(item, generator=generator) * 0.01
        channels, index = item, index + 2  # conv then ReLU
    flat = 512 * (input_shape[0] // 32) * (input_shape[1] // 32)
    state["fully_connect1.weight"] = torch.randn(512, flat, generator=generator) / flat**0.5
    state["fully_connect1.bias"] = torch.randn(512, generator=generator) * 0.01
    state["fully_connect2.weight"] = torch.randn(1, 512, generator=generator) / 512**0.5
    state["fully_connect2.bias"] = torch.randn(1, generator=generator) * 0.01
    return state


def direct_probability(state, image_1, image_2):
    """Similarity computed from the raw tensors with functional ops: the reference for compatibility."""
    def features(x):
        index = 0
        for item in VGG16_CONFIG:
            if item == "M":
                x, index = F.max_pool2d(x, 2, 2), index + 1
            else:
                x = F.relu(F.conv2d(x, state[f"vgg.features.{index}.weight"], state[f"vgg.features.{index}.bias"], padding=1))
                index += 2
        return torch.flatten(x, 1)

    x = torch.abs(features(image_1) - features(image_2))
    x = F.linear(x, state["fully_connect1.weight"], state["fully_connect1.bias"])
    x = F.linear(x, state["fully_connect2.weight"], state["fully_connect2.bias"])
    return torch.sigmoid(x)
