"""Does an exported model behave like the one it came from?

Two checks on held-out prompts: the KL divergence between the two models'
next-token distributions at every prompt position (teacher forced, so one
early difference cannot hide or inflate later ones), and whether greedy
decoding produces the very same tokens.
"""
from __future__ import annotations

from ..data.render import prompt_text


def encode_all(tok, chats: list[list[dict]], system_prompt: str) -> list[list[int]]:
    return [tok(prompt_text(tok, c, system_prompt), add_special_tokens=False)["input_ids"] for c in chats]


def _kl_per_position(ref, other, ids: list[int]):
    import torch

    x = torch.tensor([ids])  # (1, T)
    logp = torch.log_softmax(ref(input_ids=x).logits[0].float(), -1)  # (T, V)
    logq = torch.log_softmax(other(input_ids=x).logits[0].float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)  # (T,) KL(ref || other)


def _greedy(model, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
    import torch

    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                         eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def compare(ref, other, prompts: list[list[int]], eos: int, max_new_tokens: int = 32) -> dict:
    """KL(ref || other) statistics and greedy agreement over ``prompts`` (token ids)."""
    import torch

    kls, same, diffs = [], 0, []
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            kls.append(_kl_per_position(ref, other, ids))
            a, b = _greedy(ref, ids, max_new_tokens, eos), _greedy(other, ids, max_new_tokens, eos)
            if a == b:
                same += 1
            else:
                first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                diffs.append({"prompt": i, "first_different_token": first})
        all_kl = torch.cat(kls).clamp_min(0)
    return {"prompts": len(prompts), "positions": int(all_kl.numel()),
            "kl_max": float(all_kl.max()), "kl_mean": float(all_kl.mean()),
            "greedy_identical": same, "greedy_tokens": max_new_tokens, "greedy_differences": diffs}
