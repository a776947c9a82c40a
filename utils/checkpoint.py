"""The training checkpoint `last.ckpt`: everything a run needs to continue exactly where it stopped."""
import random

import numpy as np
import torch

from utils.errors import WeightsError
from utils.files import atomic_save
from utils.weights import check_finite_weights, safe_load, unwrap

NEEDED = ("model", "optimizer", "scaler", "epoch", "rng")


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


def save_checkpoint(path, model, optimizer, scaler, progress, config):
    """Write a resumable checkpoint atomically.

    `progress` is a dict of plain values saying where the run stands: `epoch` (the first epoch not finished),
    `step` (training steps done in it), the history lists, `log_dir`, the running sums of the unfinished epoch and
    the digest of the data. `config` is the run's settings as a dict.
    """
    atomic_save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "config": dict(config), **progress}, path)


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint`; raises WeightsError when it is not one."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict) or not set(NEEDED) <= set(checkpoint):
        raise WeightsError(f"{path}: not a training checkpoint (expected keys {sorted(NEEDED)})")
    check_finite_weights(checkpoint["model"], path)
    return checkpoint
