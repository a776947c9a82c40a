"""Number formats: whether a device does bfloat16 natively, and the autocast and memory layout of a step."""
import torch


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


def autocast(device, amp_dtype):
    """torch.autocast on `device` to `amp_dtype`, or a context that changes nothing when it is None."""
    return torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None)


def memory_format(channels_last):
    """The memory format images and weights take: NHWC with `channels_last`, else torch's default NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format
