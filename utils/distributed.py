"""Devices and processes: what the hardware does natively, and torchrun-aware setup (rank 0 talks and saves)."""
import os

import torch
import torch.distributed as dist


def native_bf16(device=torch.device("cpu")):
    """True where bfloat16 autocast is fast on `device`: a CUDA GPU with bf16 (Ampere or newer), or a CPU
    with AVX-512 BF16 or AMX (elsewhere it is emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def launched_by_torchrun():
    """True when torchrun (or another launcher) has set the process-group environment."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(distributed, use_cuda):
    """Start the process group if asked to or launched by torchrun; returns (rank, local_rank, world_size, device).

    NCCL on CUDA, gloo on CPU. Without distribution: rank 0 of 1 on the first GPU or the CPU.
    """
    if not (distributed or launched_by_torchrun()):
        return 0, 0, 1, torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    if not launched_by_torchrun():
        raise RuntimeError("distributed = True needs a launcher: torchrun --nproc_per_node=N train.py ...")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, local_rank, world_size, device


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
