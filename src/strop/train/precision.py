"""Choose the compute precision for a run.

bf16 autocast keeps float32 master weights and optimizer state but runs the
matmuls in bfloat16. It pays only where the hardware does bf16 natively:
CPUs with AVX-512 BF16 or AMX, and CUDA GPUs that report bf16 support.
Elsewhere autocast emulates bf16 and is slower than float32.
"""
from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..errors import StropError


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The bf16-related CPU flags present (reads /proc/cpuinfo on Linux)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return flags & {"avx512_bf16", "amx_bf16"}


def native_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(cpu_bf16_flags())


def use_bf16(cfg: TrainConfig) -> bool:
    if cfg.dtype == "bfloat16":
        return True  # weights already bf16: keep autocast consistent with them
    if cfg.mixed_precision == "no":
        return False
    if cfg.mixed_precision == "bf16":
        if not native_bf16():
            raise StropError("option mixed_precision: bf16 needs a CPU with AVX-512 BF16/AMX or a bf16 GPU; use auto or no")
        return True
    return native_bf16()
