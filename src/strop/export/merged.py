"""Fold a run's trained weights into its base model: `strop export RUN --format merged`, and in memory.

Methods whose maths allows it (``Method.mergeable``: lora, dora, ia3, full) merge; the
others (soft prompts, prefixes, non-linear bottleneck adapters) keep their adapter for
export and serving.

The base is loaded unquantized in float32 (exact for bf16/fp16 weights), the
adapter is merged there, and only then is the result cast to the base's own
dtype, so the merge itself adds no rounding beyond the final cast. A base that
is itself quantized (bitsandbytes/GPTQ config on disk) is refused: merging
into 4-bit weights would bake quantization error into every layer.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import methods, models
from ..core.errors import StropError
from ..models.templates import KWARGS_ATTR, bake_template_kwargs
from . import prompts, provenance, verify


def final_dir(run: Path) -> Path:
    path = models.resolve(str(run))
    if not isinstance(path, Path) or not (path / "strop_run.json").is_file():
        raise StropError(f"{run}: not a strop run directory (no final/strop_run.json)")
    return path


def run_info(final: Path) -> dict:
    return json.loads((final / "strop_run.json").read_text())


def mergeable_method(run, final: Path) -> str:
    """The run's method, or a one-line error when its weights cannot be folded into the base."""
    method = run_info(final).get("method", "full")
    if method in methods.METHODS and not methods.METHODS[method].mergeable:
        raise StropError(f"{run}: --method {method} cannot be merged into the base; export and serve it with its adapter")
    return method


# a short exchange whose logits must not move when the adapter is folded in (merge)
PROBE = [
    {"role": "user", "content": "Who are you, and what can you do for me today?"},
    {"role": "assistant", "content": "I am a helpful assistant. Ask me anything."},
]


def merge(run_dir: str, dtype: str = "float32"):
    """In memory: (merged plain transformers model, max abs logit difference merged vs unmerged on ``PROBE``)."""
    import torch

    from ..models.templates import render_chat

    method = methods.get(mergeable_method(run_dir, final_dir(Path(run_dir))))
    model, tok = models.load(str(run_dir), dtype)
    ids = torch.tensor([tok(render_chat(tok, PROBE, add_generation_prompt=False), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits  # (1, T, V)
        merged = model.merge_and_unload() if method.saves_adapter else model
        merged.eval()
        after = merged(input_ids=ids).logits
    return merged, (after - before).abs().max().item()


def base_dtype(base_dir: Path) -> str:
    cfg = json.loads((base_dir / "config.json").read_text())
    if cfg.get("quantization_config"):
        raise StropError(f"{base_dir}: the base model is stored quantized ({cfg['quantization_config'].get('quant_method')}); "
                         "merge needs its 16/32-bit weights: point base_model at the unquantized checkpoint")
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").removeprefix("torch.")


def _load_unmerged(final: Path, base: str | None):
    """The model as trained: float32 base (never 4-bit) plus the adapter, or the full weights."""
    import torch
    from transformers import AutoModelForCausalLM

    if base is None:
        return AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(models.resolve(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, final).eval()


def full_run_base(run: Path) -> tuple[object | None, str | None]:
    """For a full fine-tune: its base model (from RUN/config.yaml) in float32, or None and why not."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    cfg = run / "config.yaml"
    name = (yaml.safe_load(cfg.read_text()) or {}).get("base_model") if cfg.is_file() else None
    if not name:
        return None, "the run does not record its base model (no base_model in config.yaml)"
    try:
        path = models.resolve(str(name))
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), None
    except (OSError, ValueError, StropError) as exc:
        return None, f"base model {name} could not be loaded ({str(exc).splitlines()[0][:120]})"


def publish(tmp: Path, out: Path, check: dict, what: str, rename: dict[str, str] | None = None) -> Path:
    """Move the finished ``tmp`` to ``out``; when ``check`` failed, to a name that says so, and raise.

    ``rename``: files inside tmp to rename on failure (the GGUF file); else the directory
    itself is published as ``OUT.unverified``. The failure is one line, exit status 5.
    """
    target = out
    if check["verified"]:
        shutil.rmtree(out.with_name(out.name + ".unverified"), ignore_errors=True)  # an earlier failed try
    else:
        if rename:
            for old, new in rename.items():
                os.replace(tmp / old, tmp / new)
        else:
            target = out.with_name(out.name + ".unverified")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)  # a half-written export never sits under the final name
    if not check["verified"]:
        kept = target / next(iter(rename.values())) if rename else target
        raise StropError(f"export failed verification: {'; '.join(check['problems'])}{hint(check)}; "
                         f"{what} kept as {kept}", exit_code=verify.EXIT_UNVERIFIED)
    return target


def hint(check: dict) -> str:
    quant = check.get("quant")
    if quant == "q4_1" and check.get("base_check") == "compared" and check["kl_to_base_mean"] <= check["kl_mean"]:
        return (" (q4_1 rounds away most of a LoRA change that is small next to its 4-bit step, the more so on "
                "a base converted from a 4-bit file; export --quant q8_0 or f16)")
    return ""


def export_merged(run: Path, out: Path, *, dtype: str | None = None, n_prompts: int = 8,
                  min_greedy: float = verify.MIN_GREEDY) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    final = final_dir(run)
    info = run_info(final)
    method = mergeable_method(run, final)
    base = provenance.base_model_of(final)
    out_dtype = dtype or base_dtype(Path(models.resolve(base)) if base else final)
    tok = models.load_tokenizer(str(run))
    with models.safetensors_errors(final, *([models.resolve(base)] if base else [])):  # a corrupt file, named
        model = _load_unmerged(final, base)
    merged = model.merge_and_unload() if base else model
    models.fix_special_tokens(tok, merged)  # generation_config eos = <|im_end|> for ChatML models
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        merged.to(getattr(torch, out_dtype)).save_pretrained(tmp, safe_serialization=True)
        kwargs = getattr(tok, KWARGS_ATTR, {})
        if kwargs and tok.chat_template:  # readers of the exported files (llama.cpp) cannot pass them
            tok.chat_template = bake_template_kwargs(tok.chat_template, kwargs)
        models.save_tokenizer(tok, tmp, base)
        shutil.copy(final / "strop_run.json", tmp / "strop_run.json")  # system prompt travels with the weights
        del merged, model
        ref = _load_unmerged(final, base)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        base_model, note = (verify.AdapterOff(ref), None) if base else full_run_base(run)
        ids = verify.encode_all(tok, prompts.held_out(run, n_prompts), info.get("system_prompt", ""))
        check = verify.compare(ref, reloaded, ids, tok.eos_token_id, base=base_model)
        check["reference"] = "float32 base + adapter, unmerged" if base else "the run's full weights"
        verify.judge(check, min_greedy, note)
        report = provenance.record(run, final, "merged", dtype=out_dtype, method=method, verification=check)
        (tmp / "strop_export.json").write_text(json.dumps(report, indent=2))
        publish(tmp, out, check, "the merged model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once published; never a half-written OUT.tmp/ on failure
    return report
