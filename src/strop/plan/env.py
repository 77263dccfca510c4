"""`strop env`: the facts about this machine that decide what training can use."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

from ..core import threads
from .hardware import available_ram_gb, cpu_flags

LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "gguf")
CPU_FEATURES = {"avx2": "avx2", "avx512f": "avx512", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16",
                "amx_tile": "amx_tile", "fma": "fma"}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    import torch

    flags = cpu_flags()
    cuda = torch.cuda.is_available()
    gpus = [{"name": torch.cuda.get_device_properties(i).name,
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": {"model": _cpu_model(), "threads_available": len(os.sched_getaffinity(0)),
                "torch_threads": torch.get_num_threads(),
                "thread_policy": threads.policy(),  # auto sizes the pool to the cores others leave free
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                "features": {name: flag in flags for flag, name in CPU_FEATURES.items()},
                "ram_available_gb": round(available_ram_gb(), 1)},
        "gpus": gpus,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "bf16": torch.cuda.is_bf16_supported() if cuda else "avx512_bf16" in flags or "amx_bf16" in flags,
        # bitsandbytes' 4-bit layers are trained on CUDA; its CPU path is inference-only.
        "four_bit": bool(_version("bitsandbytes")) and cuda,
        "compile": _compile_available(),
    }


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compile_available() -> bool:
    """torch.compile needs a C++ compiler for its CPU backend (and Triton on GPU)."""
    import shutil

    import torch

    if not hasattr(torch, "compile"):
        return False
    if torch.cuda.is_available():
        return importlib.util.find_spec("triton") is not None
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


def format_env(f: dict) -> str:
    cpu = f["cpu"]
    feats = ", ".join(k for k, v in cpu["features"].items() if v) or "none of note"
    lines = [f"python {f['python']} on {f['platform']}",
             f"cpu: {cpu['model']}; {cpu['threads_available']} threads available, torch uses {cpu['torch_threads']}",
             f"cpu features: {feats}", f"ram available: {cpu['ram_available_gb']} GB",
             "gpu: " + ("; ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in f["gpus"]) or "none"),
             f"bf16: {'yes' if f['bf16'] else 'no'}   4-bit (bitsandbytes, CUDA): {'yes' if f['four_bit'] else 'no'}   "
             f"torch.compile: {'yes' if f['compile'] else 'no'}",
             "libraries: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in f["libraries"].items())]
    return "\n".join(lines)
