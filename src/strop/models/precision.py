"""Choose the compute precision for a run.

bf16 autocast keeps float32 master weights and optimizer state but runs the
matmuls in bfloat16. It pays only where the hardware does bf16 natively:
CPUs with AVX-512 BF16 or AMX, and CUDA GPUs that report bf16 support.
Elsewhere autocast emulates bf16 and is slower than float32.

Under autocast a float32 weight that does not train is cast to bf16 at every
use, forward and backward, and kept in memory at both widths. With ``dtype:
auto`` (the default) an adapter run therefore loads the frozen base in bf16
directly, while everything that trains (LoRA matrices, prompts, bottleneck
adapters) stays float32, so the optimizer still updates float32 master
weights. Full fine-tuning and QLoRA keep their float32 load.
"""
from __future__ import annotations

from pathlib import Path

from ..core.config import TrainConfig
from ..core.errors import StropError


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


# Methods whose base weights train (full) or are already quantized (qlora): auto keeps float32.
TRAINS_OR_QUANTIZES_BASE = ("full", "qlora")


# Strategies that flatten each unit's weights into one buffer of one dtype: auto keeps float32.
SHARDED_STRATEGIES = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")


def weights_dtype(cfg, autocast: bool, strategy: str = "none") -> str:
    """The dtype the base weights are loaded in for training: ``cfg.dtype``, or for auto the choice above
    (``strategy``: the distributed strategy, train/distributed.py)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    frozen_base = cfg.method not in TRAINS_OR_QUANTIZES_BASE and strategy not in SHARDED_STRATEGIES
    return "bfloat16" if autocast and frozen_base else "float32"


def load_dtype(cfg) -> str:
    """The dtype to load a finished run's models in for evaluation: float32 unless the config names one."""
    return "float32" if cfg.dtype == "auto" else cfg.dtype


def float32_trainables(model) -> None:
    """Upcast every trainable floating parameter that is not float32."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


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
