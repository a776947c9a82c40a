"""Several processes under torchrun: the process group, the device of each rank, and sums over ranks."""
import os

import torch
import torch.distributed as dist


def launched_by_torchrun():
    """True when torchrun (or another launcher) has set the process-group environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(distributed, device):
    """Start the process group if asked to or launched by torchrun; returns (rank, world_size).

    `device` is this process's (the config decides it: cuda:LOCAL_RANK or the CPU); NCCL on CUDA, gloo on CPU.
    Without distribution: rank 0 of 1.
    """
    if not (distributed or launched_by_torchrun()):
        return 0, 1
    if not launched_by_torchrun():
        raise RuntimeError("distributed = True needs a launcher: torchrun --nproc_per_node=N train.py ...")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size()


def world_size():
    """The number of processes in the run (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values, device):
    """Sum a list of floats over all ranks (identity without a process group)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_ranks_finite(loss):
    """True when `loss` is finite on every rank: one collective, so a NaN on one rank stops them all, not hangs them."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if is_distributed():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def any_rank(value):
    """The largest of the integer `value` over all ranks (itself without a process group): what one rank asks for,
    every rank does."""
    if not is_distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
