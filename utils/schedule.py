"""Learning-rate rules of the original: batch-size scaling, `cos` and `step` schedules, optimisers."""
import math

import torch

NOMINAL_BATCH = 64
LR_LIMITS = {"adam": (3e-4, 1e-3), "adamw": (3e-4, 1e-3), "sgd": (5e-4, 1e-1)}  # (lo, hi) for the scaled lr
MIN_STEPS = {"adam": 10_000, "adamw": 10_000, "sgd": 30_000}  # below this many steps training is probably too short
OPTIMIZERS = tuple(LR_LIMITS)
SCHEDULES = ("cos", "step")
FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused Adam and SGD kernels


def scaled_lr(batch_size, init_lr, min_lr, optimizer_type):
    """Scale the lr pair by batch_size / 64 and clamp it; returns (lr, min_lr)."""
    lo, hi = LR_LIMITS[optimizer_type]
    ratio = batch_size / NOMINAL_BATCH
    lr = min(max(ratio * init_lr, lo), hi)
    min_lr = min(max(ratio * min_lr, lo / 100), hi / 100)
    return lr, min_lr


def lr_range_line(batch_size, init_lr, min_lr, optimizer_type):
    """The line a run prints: the rates it will use, and any requested rate the clamp changed (a str)."""
    lr, low = scaled_lr(batch_size, init_lr, min_lr, optimizer_type)
    ratio = batch_size / NOMINAL_BATCH
    changed = [f"{name} {asked:g}" for name, asked, used in (("Init_lr", init_lr, lr), ("Min_lr", min_lr, low))
               if not math.isclose(ratio * asked, used, rel_tol=1e-9)]
    line = f"Learning rate {lr:g} falling to {low:g} ({optimizer_type}, batch {batch_size})"
    if changed:
        line += (f"; {' and '.join(changed)} scaled to the batch fall outside {optimizer_type}'s range and are "
                 f"clamped (docs/config.md#learning-rate)")
    return line


def lr_at_epoch(epoch, lr, min_lr, total, decay_type="cos"):
    """The learning rate for 0-based `epoch` of `total` epochs."""
    if decay_type == "cos":
        warmup = min(max(0.05 * total, 1), 3)
        plateau = min(max(0.05 * total, 1), 15)
        warmup_start = max(0.1 * lr, 1e-6)
        if epoch <= warmup:
            return (lr - warmup_start) * (epoch / warmup) ** 2 + warmup_start
        if epoch >= total - plateau:
            return min_lr
        progress = (epoch - warmup) / (total - warmup - plateau)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    if decay_type == "step":
        steps = 10
        decay = (min_lr / lr) ** (1 / (steps - 1))
        step_size = total / steps
        return lr * decay ** int(epoch // step_size)
    raise ValueError(f"unknown lr_decay_type {decay_type!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(params, optimizer_type, lr, momentum, weight_decay):
    """Adam with betas (momentum, 0.999) and an L2 penalty `weight_decay`, AdamW the same with the weights decayed
    apart from the gradient, or SGD with Nesterov momentum and an L2 penalty.

    Fused where the parameters' device has the kernels: the same update in one pass over every tensor, where the
    per-tensor loop took 14% of the demo's training time in a profile (docs/results.md).
    """
    params = list(params)
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    if optimizer_type == "adam":
        return torch.optim.Adam(params, lr, betas=(momentum, 0.999), weight_decay=weight_decay, fused=fused)
    if optimizer_type == "adamw":
        return torch.optim.AdamW(params, lr, betas=(momentum, 0.999), weight_decay=weight_decay, fused=fused)
    if optimizer_type == "sgd":
        return torch.optim.SGD(params, lr, momentum=momentum, nesterov=True, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer_type {optimizer_type!r}; choose one of {', '.join(OPTIMIZERS)}")


def set_lr(optimizer, lr):
    """Set every param group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
