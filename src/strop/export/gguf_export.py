"""`strop export RUN --format gguf`: merged model -> GGUF file + Ollama Modelfile, verified.

Verification loads the file back with transformers' own GGUF reader (which
dequantizes) and compares it with the merged model it was written from, so
the reported drift is what the quantization costs, nothing else.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import models
from ..errors import StropError
from . import gguf_file, merged, prompts, provenance, verify


def _pre_tokenizer(base: str | None) -> str:
    """llama.cpp's pre-tokenizer id: taken from the base's own GGUF file when it came from one."""
    if not base:
        return "gpt2"
    src = Path(models.resolve(base)) / "strop_source.json"
    if src.is_file():
        from gguf import GGUFReader

        field = GGUFReader(json.loads(src.read_text())["gguf"]).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return field.contents()
    return "gpt2"


def modelfile(gguf_name: str, tok, system_prompt: str) -> str:
    """An Ollama Modelfile with the run's ChatML template and stop token."""
    if "<|im_start|>" not in (tok.chat_template or ""):
        raise StropError("--format gguf: the Modelfile template is written for ChatML chat templates only")
    lines = [f"FROM ./{gguf_name}",
             'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
             '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
             '<|im_start|>assistant\n"""',
             f'PARAMETER stop "{tok.eos_token}"',
             "PARAMETER temperature 0"]
    system = system_prompt or _default_system(tok)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _default_system(tok) -> str:
    """The system text the chat template adds by itself when a chat has none (SmolLM2's does);
    Ollama templates have no such default, so the Modelfile states it."""
    from ..data.sandbox import render_chat

    text = render_chat(tok, [{"role": "user", "content": "x"}], add_generation_prompt=False)
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) else ""


def _load_back(path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def export_gguf(run: Path, out: Path, *, quant: str = "q8_0", merged_dir: Path | None = None,
                n_prompts: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = merged.final_dir(run)
    info = merged.run_info(final)
    merged_dir = merged_dir or run / "export" / "merged"
    if not (merged_dir / "strop_export.json").is_file():
        merged.export_merged(run, merged_dir, n_prompts=n_prompts)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    name = f"{run.resolve().name}-{quant}.gguf"
    gguf_file.write(merged_dir, tmp / name, quant, name=run.resolve().name,
                    pre=_pre_tokenizer(provenance.base_model_of(final)))
    tok = AutoTokenizer.from_pretrained(merged_dir)
    (tmp / "Modelfile").write_text(modelfile(name, tok, info.get("system_prompt", "")))
    ref = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    back, back_tok = _load_back(tmp / name)
    ids = verify.encode_all(tok, prompts.held_out(run, n_prompts), info.get("system_prompt", ""))
    check = verify.compare(ref, back, ids, tok.eos_token_id)
    check["reference"] = "the merged model (export/merged) in float32"
    check["tokenizer_identical"] = all(back_tok(tok.decode(i), add_special_tokens=False)["input_ids"] == i for i in ids)
    check["chat_template_identical"] = back_tok.chat_template == tok.chat_template
    report = provenance.record(run, final, "gguf", quant=quant, file=name, merged_from=str(merged_dir),
                               verification=check)
    (tmp / "strop_export.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return report
