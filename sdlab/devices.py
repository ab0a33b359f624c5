"""Choosing and validating the device and dtype a model runs on."""
from __future__ import annotations

import torch
from .errors import InvalidArgument, WrongType

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "full": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; an explicit choice is checked."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise WrongType(f"device must be a string like 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps', not {device!r}")
    name = device.strip().lower()
    if name == "auto":
        if cuda_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InvalidArgument(
            f"Unknown device {device!r}. Use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from None
    if dev.type == "cuda":
        if not cuda_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}, but no GPU/driver is visible"
            raise InvalidArgument(
                f"device={device!r} was asked for, but CUDA is not available here ({build}). "
                "Use device='auto' or 'cpu', or install a CUDA build of torch (see README, 'GPU')."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InvalidArgument(f"device={device!r}: there are only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1}).")
        return dev
    if dev.type == "mps":
        if not mps_available():
            raise InvalidArgument(
                f"device={device!r} was asked for, but Apple MPS is not available here. Use device='auto' or 'cpu'."
            )
        return dev
    if dev.type == "cpu":
        return dev
    raise InvalidArgument(f"Unsupported device {device!r}. Use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere (MPS included: fp16 there gives black images on
    some torch versions); float16 on the CPU is refused because many CPU kernels lack it or crawl."""
    if dtype == "auto" or dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise InvalidArgument(f"Unknown dtype {dtype!r}. Use 'auto', 'float32', 'float16' or 'bfloat16'.")
        dtype = _DTYPES[key]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidArgument(f"Unsupported dtype {dtype}. Use 'auto', 'float32', 'float16' or 'bfloat16'.")
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidArgument(
            "dtype float16 was asked for on the CPU, where it is unsupported or very slow. "
            "Use dtype='float32' (or 'bfloat16') on the CPU, or a GPU with device='cuda'."
        )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take now: the GPU's free memory (torch.cuda.mem_get_info) for CUDA, the
    system's available memory (Linux's MemAvailable, else physical pages) for the CPU; None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"
