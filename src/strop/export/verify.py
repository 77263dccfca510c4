"""Does an exported model behave like the one it came from, and not like its base?

Checks on held-out prompts: the KL divergence between next-token
distributions at every prompt position (teacher forced, so one early
difference cannot hide or inflate later ones), and whether greedy decoding
produces the very same tokens. The export is compared with the tuned model
it came from and, when the base model is known, with the base too: an export
that rounded the fine-tune away (a 4-bit GGUF of a LoRA on a base that was
itself converted from a 4-bit file) is close to the tuned model by any
absolute yardstick on a small model, yet closer still to the base.

``judge`` turns the figures into a verdict: the export fails when it is at
least as close to the base as to the tuned model (KL(base || export) <=
KL(tuned || export), means over all positions), or when its greedy output
equals the tuned model's on fewer than ``MIN_GREEDY`` of the prompts. A run
whose tuned model hardly differs from its base on these prompts (mean
KL(tuned || base) below ``CHANGE_FLOOR`` and greedy outputs all identical)
has nothing to lose, so the closer-to-the-base test is skipped and the report
says so; so it is when the base model is unknown or cannot be loaded.
"""
from __future__ import annotations

import math

from ..core.errors import StropError
from ..models.templates import prompt_text

MIN_GREEDY = 0.5  # default --min-greedy: share of prompts whose greedy output must equal the tuned model's
CHANGE_FLOOR = 1e-3  # mean KL(tuned || base) below which a run counts as not having changed its base
EXIT_UNVERIFIED = 5  # `strop export` exit status when the written export failed verification


def render_all(tok, chats: list[list[dict]], system_prompt: str) -> list[str]:
    return [prompt_text(tok, c, system_prompt) for c in chats]


def encode_texts(tok, texts: list[str]) -> list[list[int]]:
    return [tok(text, add_special_tokens=False)["input_ids"] for text in texts]


def encode_all(tok, chats: list[list[dict]], system_prompt: str) -> list[list[int]]:
    return encode_texts(tok, render_all(tok, chats, system_prompt))


def _logp(model, ids: list[int]):
    import torch

    return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)  # (T, V)


def _kl(logp, logq):
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0)  # (T,) KL(p || q)


def _greedy(model, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
    import torch

    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                         eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


class AdapterOff:
    """A peft model with its adapter disabled, usable where ``compare`` expects the base model."""

    def __init__(self, peft_model) -> None:
        self.model = peft_model

    def __call__(self, **kw):
        with self.model.disable_adapter():
            return self.model(**kw)

    def generate(self, **kw):
        with self.model.disable_adapter():
            return self.model.generate(**kw)


class LlamaCpp:
    """A GGUF file run by llama.cpp itself (llama-cpp-python), usable where ``compare`` expects a model.

    Logits come from llama.cpp's own forward over the prompt (every position kept); greedy
    decoding is its sampler at temperature 0 with top-k 1 and no repetition penalty.
    """

    def __init__(self, path, vocab_size: int, n_ctx: int = 0) -> None:  # 0: the model's own context
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False)
        self.vocab_size = vocab_size

    def __call__(self, input_ids, **kw):
        from types import SimpleNamespace

        import numpy as np
        import torch

        ids = input_ids[0].tolist()
        self.llm.reset()
        self.llm.eval(ids)
        logits = torch.from_numpy(np.array(self.llm.scores[:len(ids)], dtype=np.float32))
        if logits.shape[-1] < self.vocab_size:  # the HF embedding padded past the tokenizer: never predicted
            pad = logits.new_full((logits.shape[0], self.vocab_size - logits.shape[-1]), float(logits.min()) - 50)
            logits = torch.cat([logits, pad], dim=-1)
        return SimpleNamespace(logits=logits[None, :, :self.vocab_size])

    def generate(self, input_ids, max_new_tokens: int, eos_token_id: int, **kw):
        import torch

        ids, out = input_ids[0].tolist(), []
        self.llm.reset()
        for t in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            out.append(t)
            if t == eos_token_id or len(out) == max_new_tokens:
                break
        return torch.tensor([ids + out])

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    @property
    def chat_template(self) -> str | None:
        return self.llm.metadata.get("tokenizer.chat_template")


def llama_cpp_version() -> str | None:
    """llama-cpp-python's version when it is installed: then GGUF files are checked by llama.cpp itself."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return getattr(llama_cpp, "__version__", "unknown")


def _stats(kls: list) -> tuple[float, float]:
    import torch

    all_kl = torch.cat(kls)
    return float(all_kl.max()), float(all_kl.mean())


def compare(ref, other, prompts: list[list[int]], eos: int, max_new_tokens: int = 32, base=None) -> dict:
    """KL(ref || other) statistics and greedy agreement over ``prompts`` (token ids).

    With ``base``: also KL(base || other), KL(ref || base) and the greedy
    agreement of ``other`` and of ``ref`` with the base.
    """
    import torch

    kls, to_base, tuning, same, same_base, tuned_base, diffs = [], [], [], 0, 0, 0, []
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            lp, lq = _logp(ref, ids), _logp(other, ids)
            kls.append(_kl(lp, lq))
            a, b = _greedy(ref, ids, max_new_tokens, eos), _greedy(other, ids, max_new_tokens, eos)
            if a == b:
                same += 1
            else:
                first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                diffs.append({"prompt": i, "first_different_token": first})
            if base is not None:
                lb = _logp(base, ids)
                to_base.append(_kl(lb, lq))
                tuning.append(_kl(lp, lb))
                c = _greedy(base, ids, max_new_tokens, eos)
                same_base += b == c
                tuned_base += a == c
    kl_max, kl_mean = _stats(kls)
    out = {"prompts": len(prompts), "positions": sum(int(k.numel()) for k in kls),
           "kl_max": kl_max, "kl_mean": kl_mean,
           "greedy_identical": same, "greedy_tokens": max_new_tokens, "greedy_differences": diffs}
    if base is not None:
        b_max, b_mean = _stats(to_base)
        t_max, t_mean = _stats(tuning)
        out.update({"kl_to_base_max": b_max, "kl_to_base_mean": b_mean, "greedy_identical_to_base": same_base,
                    "tuned_vs_base_kl_max": t_max, "tuned_vs_base_kl_mean": t_mean,
                    "tuned_vs_base_greedy_identical": tuned_base})
    return out


def judge(check: dict, min_greedy: float = MIN_GREEDY, base_note: str | None = None) -> dict:
    """Add ``verified`` (bool), ``problems`` (list of str) and ``base_check`` (what was compared) to ``check``.

    ``base_note`` says why there is no base comparison when ``check`` holds none.
    """
    if not 0 <= min_greedy <= 1:
        raise StropError(f"option --min-greedy: {min_greedy} is not a fraction between 0 and 1")
    n = check["prompts"]
    need = math.ceil(min_greedy * n)
    problems = []
    if "kl_to_base_mean" not in check:
        check["base_check"] = f"skipped: {base_note or 'no base model to compare with'}"
    elif check["tuned_vs_base_kl_mean"] < CHANGE_FLOOR and check["tuned_vs_base_greedy_identical"] == n:
        check["base_check"] = (f"skipped: the tuned model hardly differs from its base on these prompts "
                               f"(KL mean {check['tuned_vs_base_kl_mean']:.2g} < {CHANGE_FLOOR:g}, "
                               f"greedy identical {n}/{n}), so there is no fine-tune to lose")
    else:
        check["base_check"] = "compared"
        if check["kl_to_base_mean"] <= check["kl_mean"]:
            problems.append(f"KL to tuned {check['kl_mean']:.3g}, to base {check['kl_to_base_mean']:.3g}: "
                            "the export is closer to the base model; the fine-tune was lost")
    check["greedy_required"] = need
    if check["greedy_identical"] < need:
        problems.append(f"greedy output identical to the tuned model on {check['greedy_identical']}/{n} prompts "
                        f"(--min-greedy {min_greedy:g} needs {need})")
    check["problems"] = problems
    check["verified"] = not problems
    return check


def summary(check: dict) -> str:
    """One line of figures for the CLI."""
    n = check["prompts"]
    line = (f"KL to tuned max {check['kl_max']:.2e}, mean {check['kl_mean']:.2e}; "
            f"greedy identical to tuned {check['greedy_identical']}/{n}")
    if "kl_to_base_mean" in check:
        line += (f"; to base: KL mean {check['kl_to_base_mean']:.2e}, greedy identical "
                 f"{check['greedy_identical_to_base']}/{n} (tuned vs base: KL mean "
                 f"{check['tuned_vs_base_kl_mean']:.2e}, greedy identical {check['tuned_vs_base_greedy_identical']}/{n})")
    if check.get("base_check", "compared") != "compared":
        line += f"; base check {check['base_check']}"
    return line
