"""Memory per device when a run is split over processes (`strop plan --nproc N --distributed S`).

Each strategy keeps some parts of the one-process breakdown whole on every
device, divides some by the number of processes, and moves some to host RAM.
The table follows the shipped configs in ``src/strop/distributed_configs/`` (ZeRO-2
offloads the optimizer, ZeRO-3 the optimizer and the weights). Activations
and the loss stay whole: every process runs its own micro-batch.
"""
from __future__ import annotations

from ..core.errors import StropError

# part of memory.breakdown -> "divided" (1/N per device) or "host" (1/N per process, in host RAM)
STRATEGIES = {
    "ddp": {},
    "fsdp": {"weights": "divided", "gradients": "divided", "optimizer": "divided"},
    "deepspeed-zero2": {"gradients": "divided", "optimizer": "host"},
    "deepspeed-zero3": {"weights": "host", "gradients": "divided", "optimizer": "host"},
}
# Split weights are gathered a decoder layer at a time, the next one prefetched
# while the current one computes: two layers' worth is whole at any moment.
GATHERED_LAYERS = 2


def check(strategy: str, nproc: int) -> None:
    if strategy not in STRATEGIES:
        raise StropError(f"option --distributed: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if nproc < 1:
        raise StropError(f"option --nproc: must be at least 1, got {nproc}")


def per_device(parts: dict[str, float], strategy: str, nproc: int, layers: int) -> tuple[dict[str, float], float]:
    """(the parts as one device holds them, bytes each process keeps in host RAM)."""
    rules = STRATEGIES[strategy]
    out, host = dict(parts), 0.0
    if strategy == "ddp" and nproc > 1:
        # The reducer averages gradients in buckets of its own (gradient_as_bucket_view
        # is off by default), a second copy of every trainable gradient.
        out["gradients"] = 2 * parts["gradients"]
    for part, rule in rules.items():
        share = parts[part] / nproc
        out[part] = share if rule == "divided" else 0.0
        host += share if rule == "host" else 0.0
    if rules.get("weights"):
        out["weights"] += parts["weights"] * min(1.0, GATHERED_LAYERS / max(1, layers))
    return out, host
