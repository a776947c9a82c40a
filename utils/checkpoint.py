"""Weights on disk: safe loading, atomic saving, ImageNet weights, and the checkpoint used to resume a run."""
import contextlib
import io
import os
import pickle
import random
import tempfile

import numpy as np
import torch
from torchvision.models import (MobileNet_V3_Large_Weights, ResNet18_Weights, ResNet50_Weights, VGG16_BN_Weights,
                                VGG16_Weights)

from utils.errors import SaveError, WeightsError

IMAGENET_WEIGHTS_URLS = {  # torchvision's IMAGENET1K_V1 files, kept in model_data/ under their own names
    "vgg16": VGG16_Weights.IMAGENET1K_V1.url,  # vgg16-397923af.pth
    "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1.url,  # vgg16_bn-6c64b313.pth
    "resnet18": ResNet18_Weights.IMAGENET1K_V1.url,  # resnet18-f37072fd.pth
    "resnet50": ResNet50_Weights.IMAGENET1K_V1.url,  # resnet50-0676ba61.pth
    "mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1.url,  # mobilenet_v3_large-8738ca79.pth
}


TEMPORARY_PREFIX = ".tmp-"  # then the writer's pid: a later run can tell a dead writer's leftovers


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary name beside `path` for the `with` block to write; renamed to `path` when the block ends
    without error, deleted otherwise (Ctrl-C too), so a crash never leaves half a file.

    The file gets the permissions a plain `open` would give (the umask applied to 0o666). Raises SaveError
    naming `path` when it cannot be written (a full disk, no permission); `path` is then untouched.
    """
    tmp = None
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-", suffix=suffix)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise SaveError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write(data, path):
    """Write the bytes `data` to `path` through `atomic_path`, synced to disk before the rename."""
    with atomic_path(path, os.path.splitext(path)[1]) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_save(obj, path):
    """torch.save `obj` to `path` through `atomic_write`; raises SaveError naming `path` when it cannot be written."""
    data = io.BytesIO()
    torch.save(obj, data)  # in memory first: torch.save reports a failed file write as an opaque RuntimeError
    atomic_write(data.getbuffer(), path)


def output_problem(path, option):
    """Why command-line `option` (e.g. "--out") cannot name the file `path` to write, in one line; "" when it can."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{option} {path}: is a directory; name a file in it"
    if not os.path.isdir(folder):
        return f"{option} {path}: no such folder {folder}"
    if not os.access(folder, os.W_OK):
        return f"{option} {path}: folder {folder} is not writable"
    return ""


def current_umask():
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder):
    """Delete `atomic_save` leftovers in `folder` whose writing process is gone; returns how many."""
    removed = 0
    for entry in os.scandir(folder):
        pid = entry.name[len(TEMPORARY_PREFIX):].split("-")[0]
        if entry.name.startswith(TEMPORARY_PREFIX) and entry.name.endswith(".pth") and pid.isdigit() \
                and not process_alive(int(pid)):
            os.remove(entry.path)
            removed += 1
    return removed


def process_alive(pid):
    """True when a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


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
    """The plain nn.Module under DDP and torch.compile wrappers (whose state-dict keys are prefixed)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def load_weights(path):
    """The model state dict in a weights file or a training checkpoint.

    Raises WeightsError naming the file when it is not a state dict, or naming the first tensor that
    holds NaN or infinity (such weights score every pair NaN).
    """
    state = safe_load(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = state.get("model", state)  # a training checkpoint holds the weights under "model"
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


def load_exact(model, state, path):
    """Load every key of `state` (read from `path`) into `model`; raises WeightsError naming the file on a mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: not Siamese {model.backbone} weights (missing {len(missing)} keys, e.g. {missing[:2]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            hint = ""
            if key == "fully_connect1.weight":
                hint = (f"; these weights take {value.shape[1]} backbone features, this input_shape gives "
                        f"{own[key].shape[1]}: pass the input_shape the weights were trained at")
            raise WeightsError(f"{path}: {key} has shape {list(value.shape)}, expected {list(own[key].shape)}{hint}")
    model.load_state_dict(state)
    return model


def rng_state():
    """The python, numpy and torch (CPU and CUDA) random states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)  # tensors load safely
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, optimizer, scaler, epoch, history, log_dir, config):
    """Write a resumable training checkpoint atomically; `epoch` is the next epoch to run."""
    atomic_save(
        {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "losses": list(history.losses),
            "val_losses": list(history.val_losses),
            "oneshots": list(history.oneshots),
            "log_dir": log_dir,
            "rng": rng_state(),
            "config": dict(vars(config)),
        },
        path,
    )


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint`; raises WeightsError when it is not one."""
    checkpoint = safe_load(path)
    needed = {"model", "optimizer", "scaler", "epoch", "rng"}
    if not isinstance(checkpoint, dict) or not needed <= set(checkpoint):
        raise WeightsError(f"{path}: not a training checkpoint (expected keys {sorted(needed)})")
    check_finite_weights(checkpoint["model"], path)
    return checkpoint
