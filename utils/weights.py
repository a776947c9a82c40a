"""Weights on disk: safe loading, loading into a network by name and shape, and torchvision's ImageNet files."""
import json
import math
import os
import pickle

import torch
from torchvision.models import (MobileNet_V3_Large_Weights, ResNet18_Weights, ResNet50_Weights, VGG16_BN_Weights,
                                VGG16_Weights)

from nets.siamese import BACKBONES, is_backbone
from utils.errors import WeightsError
from utils.files import atomic_save, atomic_write

IMAGENET_WEIGHTS_URLS = {  # torchvision's IMAGENET1K_V1 files, kept in model_data/ under their own names
    "vgg16": VGG16_Weights.IMAGENET1K_V1.url,  # vgg16-397923af.pth
    "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1.url,  # vgg16_bn-6c64b313.pth
    "resnet18": ResNet18_Weights.IMAGENET1K_V1.url,  # resnet18-f37072fd.pth
    "resnet18_layer3": ResNet18_Weights.IMAGENET1K_V1.url,  # resnet18's file, without what follows layer3
    "resnet50": ResNet50_Weights.IMAGENET1K_V1.url,  # resnet50-0676ba61.pth
    "mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1.url,  # mobilenet_v3_large-8738ca79.pth
}


def safe_load(path):
    """torch.load with weights_only=True: tensors and plain containers only, never code.

    Raises WeightsError naming `path` when it is missing, is not a torch file, or holds objects
    that would need arbitrary code to unpickle (nothing in such a file is run).
    """
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's line reads "WeightsUnpickler error: Unsupported global: GLOBAL io.open was not ... Please use ..."
        lines = [line[line.index("Unsupported"):] for line in str(e).splitlines() if "Unsupported" in line]
        reason = lines[0].split(". Please")[0].strip() if lines else type(e).__name__
        if "global" in reason:  # a class or function reference: the file wants to run code
            raise WeightsError(f"{path}: refused to load, it holds objects other than weights ({reason})") from None
        raise WeightsError(f"{path}: not a readable torch weights file ({reason})") from None
    except Exception as e:  # zip/EOF/format errors: not a torch file or truncated
        raise WeightsError(f"{path}: not a readable torch weights file ({type(e).__name__}: {e})") from None


def load_imagenet_weights(model_dir="model_data", url=IMAGENET_WEIGHTS_URLS["vgg16"]):
    """torchvision's ImageNet state dict from `url` (one of IMAGENET_WEIGHTS_URLS, VGG16's by default).

    Looks for the file (the URL's file name) in `model_dir` first, downloads it there through torch's
    hub machinery second, and raises a WeightsError naming the file and where to put it third.
    """
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=model_dir, map_location="cpu", progress=True,
                                                  weights_only=True)
    except Exception as e:  # urllib, hash and unpickling errors all mean the same to the user
        name = os.path.basename(url)
        raise WeightsError(
            f"cannot load ImageNet weights {name} ({type(e).__name__}: {e}); put {name} "
            f"at {os.path.join(model_dir, name)} (from {url}) or set pretrained = False"
        ) from None


def unwrap(model):
    """The plain nn.Module under DDP, torch.compile and weight-averaging wrappers (whose keys are prefixed)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def load_weights(path):
    """The model state dict in a weights file or a training checkpoint: {name: tensor}.

    Raises WeightsError naming the file when it is not a state dict of tensors, or naming the first tensor that
    holds NaN or infinity (such weights score every pair NaN).
    """
    return state_dict_of(safe_load(path), path)


def state_dict_of(state, path):
    """The checked state dict in what `safe_load` read from `path` (a training checkpoint's under "model")."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise WeightsError(f"{path}: not a state dict of tensors ({key!r} holds {type(value).__name__})")
    check_finite_weights(state, path)
    return state


def check_finite_weights(state, path):
    """Raise WeightsError naming `path` and the first floating tensor of `state` with NaN or infinity."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"{path}: {key} holds NaN or infinite values; these weights cannot score anything")


def load_matching(model, state):
    """Load the keys of `state` whose name and shape match `model`; returns (loaded, not_loaded) key lists."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and hasattr(v, "shape") and v.shape == own[k].shape}
    own.update(matched)
    model.load_state_dict(own)
    return sorted(matched), sorted(k for k in state if k not in matched)


def fold_calibration(state, scale, shift):
    """A copy of Siamese weights `state` whose logits are `scale * logit + shift`: a calibration folded into
    fully_connect2's weight and bias, so the weights keep the original's format."""
    state = dict(state)
    state["fully_connect2.weight"] = state["fully_connect2.weight"] * scale
    state["fully_connect2.bias"] = state["fully_connect2.bias"] * scale + shift
    return state


def save_calibrated(source, target, scale, shift, settings):
    """Write `target` (.pth and its .json settings file) from the weights file `source`: its weights with the
    calibration `scale * logit + shift` folded into the head (`fold_calibration`), and the settings file of `source`
    (what it recorded, if anything) updated with `settings`: those the calibrated scores were computed with, the
    threshold chosen on them, where they were fitted."""
    state, recorded, _ = read_weights(source)
    json_path = settings_path(source)
    kept = read_settings_file(json_path) if os.path.isfile(json_path) else dict(recorded)
    kept.pop("version", None)
    atomic_save(fold_calibration(state, scale, shift), target)
    write_settings(target, {**kept, **settings})


def shape_problem(own, state, path, backbone):
    """Why `state` (read from `path`) cannot load into a network whose state dict is `own`, in one line; "" when it
    can."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        return (f"{path}: not Siamese {backbone} weights (missing {len(missing)} keys, e.g. {missing[:2]}; "
                f"unexpected {len(unexpected)}, e.g. {unexpected[:2]})")
    for key, value in state.items():
        if value.shape != own[key].shape:
            hint = ""
            if key == "fully_connect1.weight":
                hint = (f"; these weights take {value.shape[1]} backbone features, this input_shape gives "
                        f"{own[key].shape[1]}: pass the input_shape the weights were trained at")
            return f"{path}: {key} has shape {list(value.shape)}, expected {list(own[key].shape)}{hint}"
    return ""


def load_exact(model, state, path):
    """Load every key of `state` (read from `path`) into `model`; raises WeightsError naming the file on a mismatch."""
    problem = shape_problem(model.state_dict(), state, path, model.backbone)
    if problem:
        raise WeightsError(problem)
    model.load_state_dict(state)
    return model


SETTINGS_VERSION = 1
RECORDED = ("backbone", "input_shape", "letterbox_image", "crop_to_ink", "threshold")  # what settings tell a predictor
MAX_SETTINGS_BYTES = 1 << 20


def settings_path(weights_path):
    """The settings file beside a weights file: the same name with .json (best_epoch_weights.json)."""
    return os.path.splitext(str(weights_path))[0] + ".json"


def write_settings(weights_path, settings):
    """Write `settings` (a dict of plain values) as the JSON file beside `weights_path`, atomically."""
    text = json.dumps({"version": SETTINGS_VERSION, **settings}, indent=2, allow_nan=False)
    atomic_write((text + "\n").encode("utf-8"), settings_path(weights_path))


def read_weights(path):
    """(state dict, recorded settings, where they were recorded) of a weights file or training checkpoint.

    The settings come from the JSON file beside it (`settings_path`) or, for a checkpoint, from its config; {} (and
    "") when neither says anything, as for the original's weights. Raises WeightsError naming the file at fault:
    weights as `load_weights`, a settings file that is not valid JSON or holds a value no network takes.
    """
    raw = safe_load(path)
    recorded, source, state = {}, "", state_dict_of(raw, path)
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict) and isinstance(raw.get("model"), dict):
        recorded = {"backbone": raw["config"].get("backbone"), "input_shape": raw["config"].get("input_shape"),
                    "letterbox_image": False, "crop_to_ink": raw["config"].get("crop_to_ink", False),
                    "threshold": raw.get("threshold")}
        problem = settings_problem(recorded) or calibration_problem(raw.get("calibration"))
        if problem:
            raise WeightsError(f"{path}: a damaged training checkpoint ({problem})")
        source, state = str(path), checkpoint_weights(raw, state)
    json_path = settings_path(path)
    if os.path.isfile(json_path):
        recorded, source = read_settings_file(json_path), json_path
    recorded = {k: v for k, v in recorded.items() if k in RECORDED and v is not None}
    return state, recorded, source if recorded else ""


def checkpoint_weights(checkpoint, state):
    """The weights a training checkpoint's run saves as .pth files: the average of the weights where it keeps one,
    with the calibration it recorded folded in; `state` is its checked "model"."""
    average = checkpoint.get("average")
    if isinstance(average, dict):
        state = {k[len("module."):]: v for k, v in average.items() if k.startswith("module.")} or state
    calibration = checkpoint.get("calibration")
    if isinstance(calibration, dict) and {"scale", "shift"} <= set(calibration):
        state = fold_calibration(state, calibration["scale"], calibration["shift"])
    return state


def calibration_problem(calibration):
    """What is wrong with a checkpoint's recorded calibration (None, or {"scale": number, "shift": number}), or ""."""
    if calibration is None:
        return ""
    values = [calibration.get(k) for k in ("scale", "shift")] if isinstance(calibration, dict) else [None]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return f"calibration {calibration!r} is not a finite scale and shift"
    return ""


def read_settings_file(json_path):
    """The settings in a JSON settings file, checked; raises WeightsError naming the file when it is damaged."""
    try:
        with open(json_path, "rb") as f:
            data = f.read(MAX_SETTINGS_BYTES + 1)
        if len(data) > MAX_SETTINGS_BYTES:
            raise WeightsError(f"{json_path}: damaged settings file (larger than {MAX_SETTINGS_BYTES} bytes)")
        settings = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{json_path}: damaged settings file ({type(e).__name__}: {e}); delete it to use the "
                           f"weights without it") from None
    problem = settings_problem(settings)
    if problem:
        raise WeightsError(f"{json_path}: damaged settings file ({problem}); delete it to use the weights without it")
    return settings


def settings_problem(settings):
    """What is wrong with a settings file's contents, or "" when every recorded value can be used."""
    if not isinstance(settings, dict):
        return f"expected an object, found {type(settings).__name__}"
    shape, threshold = settings.get("input_shape"), settings.get("threshold")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 2
                                  and all(isinstance(side, int) and side >= 1 for side in shape)):
        return f"input_shape {shape!r} is not [height, width]"
    for name in ("letterbox_image", "crop_to_ink"):
        if settings.get(name) not in (None, True, False):
            return f"{name} {settings[name]!r} is not true or false"
    if threshold is not None and not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                                      and 0 <= threshold <= 1):
        return f"threshold {threshold!r} is not a number in [0, 1]"
    if settings.get("backbone") is not None and not is_backbone(settings["backbone"]):
        return f"backbone {settings['backbone']!r} is not one of {', '.join(BACKBONES)}"
    return ""
