"""`strop serve --engine vllm`: hand the model to vLLM's OpenAI server (optional extra; needs a GPU).

vLLM gets a plain HF directory: the run's merged export (made with
`strop export RUN --format merged` when missing), or a base model plus LoRA
adapters via --enable-lora / --lora-modules.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .. import models
from ..core.errors import StropError


def _model_dir(model: str) -> str:
    path = Path(model)
    if models.is_run_dir(path):
        merged = path / "export" / "merged"
        if not (merged / "strop_export.json").is_file():
            from ..export import export

            export(model, "merged")
        return str(merged)
    return str(models.resolve(model))


def command(model: str, host: str, port: int, api_key: str | None, adapters: list[str]) -> list[str]:
    from .adapters import parse

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", _model_dir(model),
           "--host", host, "--port", str(port), "--served-model-name", Path(model).resolve().name]
    table = parse(adapters)
    if table:
        cmd += ["--enable-lora", "--lora-modules", *[f"{n}={p}" for n, p in table.items()]]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd


def run_vllm(model: str, *, host: str, port: int, api_key: str | None, adapters: list[str]) -> int:
    if importlib.util.find_spec("vllm") is None:
        raise StropError("--engine vllm: vLLM is not installed (pip install 'strop[vllm]' on a machine with a CUDA GPU)")
    cmd = command(model, host, port, api_key, adapters)
    os.execv(cmd[0], cmd)  # vLLM owns the process from here, signals included
    return 0  # not reached
