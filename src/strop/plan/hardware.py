"""Devices a plan can target: a built-in table of common GPUs and this machine's CPU.

Figures are the vendors' published dense (no sparsity) bf16 tensor TFLOP/s
and memory per card; `source` says where each row comes from so a reader can
check it. Peak is not what training reaches: the plan multiplies it by a
stated utilisation (see cost.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StropError


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cuda" or "cpu"
    memory_gb: float  # what the run may use (GPU memory, or available RAM)
    bf16_tflops: float  # dense peak
    bandwidth_gbs: float
    source: str


GPUS: dict[str, Device] = {d.name: d for d in (
    Device("t4", "cuda", 16, 65, 320, "NVIDIA T4 datasheet (fp16 tensor; no bf16)"),
    Device("a10g", "cuda", 24, 70, 600, "NVIDIA A10G (AWS G5) datasheet"),
    Device("l4", "cuda", 24, 121, 300, "NVIDIA L4 datasheet"),
    Device("rtx3090", "cuda", 24, 71, 936, "NVIDIA Ampere GA102 whitepaper"),
    Device("rtx4090", "cuda", 24, 165, 1008, "NVIDIA Ada Lovelace whitepaper"),
    Device("a100-40gb", "cuda", 40, 312, 1555, "NVIDIA A100 datasheet"),
    Device("a100-80gb", "cuda", 80, 312, 2039, "NVIDIA A100 datasheet"),
    Device("l40s", "cuda", 48, 362, 864, "NVIDIA L40S datasheet"),
    Device("h100-pcie", "cuda", 80, 756, 2000, "NVIDIA H100 datasheet"),
    Device("h100", "cuda", 80, 989, 3350, "NVIDIA H100 SXM datasheet"),
    Device("h200", "cuda", 141, 989, 4800, "NVIDIA H200 datasheet"),
    Device("b200", "cuda", 180, 2250, 8000, "NVIDIA DGX B200 datasheet, per GPU"),
)}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def available_ram_gb() -> float:
    """MemAvailable: what a new process can take without swapping others out."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def cpu_peak_tflops(bf16: bool = True) -> float:
    """Rough dense peak of this CPU: 2 FMA units x vector lanes x 2 flops x ~2.5 GHz per core in
    float32; with AVX-512 BF16 or AMX and ``bf16``, twice that (a bf16 dot-product instruction does
    two products per float32 lane; AMX can do more, counted the same to stay conservative)."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fp32 = threads * 2 * lanes * 2 * 2.5e9 / 1e12
    return fp32 * (2 if bf16 and flags & {"avx512_bf16", "amx_bf16"} else 1)


def cpu_device() -> Device:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    vector = "AVX-512" if lanes == 16 else "AVX2" if lanes == 8 else "SSE"
    bf16 = " BF16" if flags & {"avx512_bf16", "amx_bf16"} else ""
    return Device("cpu", "cpu", round(available_ram_gb(), 1), round(cpu_peak_tflops(), 2), 20.0,
                  f"this machine: {threads} threads, {vector}{bf16}, /proc/meminfo MemAvailable")


def get_device(name: str | None) -> Device:
    """``cpu``, ``cuda`` (the visible GPU), or ``cuda:NAME`` / ``NAME`` from the table."""
    if not name or name == "cpu":
        return cpu_device()
    key = name.split(":", 1)[1] if name.startswith("cuda:") else name
    if key == "cuda" or key.isdigit():
        return _visible_gpu()
    key = key.lower()
    if key not in GPUS:
        from ..core.suggest import unknown

        raise StropError("option device: " + unknown("device", name, ["cpu", "cuda"] + [f"cuda:{g}" for g in GPUS]))
    return GPUS[key]


def _visible_gpu() -> Device:
    import torch

    if not torch.cuda.is_available():
        raise StropError("option device: no CUDA GPU is visible here; name one from the table, e.g. --device cuda:a100-80gb")
    props = torch.cuda.get_device_properties(0)
    for dev in GPUS.values():  # borrow peak figures from the table when the card is known
        if dev.name.replace("-", "") in props.name.lower().replace(" ", "").replace("-", ""):
            return Device(props.name, "cuda", props.total_memory / 2**30, dev.bf16_tflops, dev.bandwidth_gbs, dev.source)
    return Device(props.name, "cuda", props.total_memory / 2**30, 100.0, 1000.0, "detected; peak TFLOP/s unknown, 100 assumed")
