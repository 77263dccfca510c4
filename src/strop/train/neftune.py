"""NEFTune (noisy embeddings while training) with the noise scaled per example, packed rows included.

NEFTune adds uniform noise in [-m, m] to every input embedding during training, with
m = alpha / sqrt(L x d) for an example of L tokens and embedding width d. transformers' hook
(``neftune_noise_alpha``) takes L from the tensor it sees: on a padding-free micro-batch, which is
one row holding every example, that is the micro-batch's total length, so each example gets
1 / sqrt(number of examples) of the noise it should (transformers issue 34659, open when this was
written). strop trains padding-free by default, so it installs its own pair of hooks instead:

* a pre-hook on the decoder notes the example lengths of the batch about to be embedded, from
  ``position_ids`` (a packed row restarts its positions at 0 for each example) or, for padded
  batches, from ``attention_mask`` (the real tokens of each row);
* a hook on the input embeddings adds the noise, each example's tokens with their own m, and only
  in training mode (evaluation, generation and the ``preserve: kl`` rows see clean embeddings).
"""
from __future__ import annotations

import contextlib


def example_lengths(shape: tuple[int, int], position_ids=None, attention_mask=None):
    """Per token, the length of the example it belongs to: a (batch, length) float tensor, or None
    where nothing tells the examples apart (then each row counts as one example of its full length)."""
    import torch

    if position_ids is not None and position_ids.shape == shape:
        starts = position_ids == 0
        starts[:, 0] = True
        example = torch.cumsum(starts.long(), dim=1) - 1  # which example of its row each token is in
        out = torch.empty(shape, dtype=torch.float32, device=position_ids.device)
        for r in range(shape[0]):  # a micro-batch holds one packed row, or a few padded ones
            counts = torch.bincount(example[r])
            out[r] = counts[example[r]].float()
        return out
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape == shape:
        real = attention_mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        return real.expand(shape)
    return None


@contextlib.contextmanager
def noisy_embeddings(model, alpha: float):
    """NEFTune on ``model`` (a transformers model or a peft wrapper of one) for the ``with`` block."""
    if not alpha:
        yield
        return
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, embed = inner.get_decoder(), inner.get_input_embeddings()
    seen: dict = {}

    def note(module, args, kwargs):
        if not module.training:  # evaluation and generation get no noise, so no lengths either
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen["lengths"] = None if ids is None else example_lengths(
            tuple(ids.shape), kwargs.get("position_ids"), kwargs.get("attention_mask"))

    def add_noise(module, args, output):
        if not module.training:
            return output
        lengths = seen.pop("lengths", None)
        if lengths is None or lengths.shape != output.shape[:2]:
            lengths = torch.full(output.shape[:2], float(output.shape[1]), device=output.device)
        bound = (alpha / torch.sqrt(lengths.to(output.device) * output.shape[-1])).unsqueeze(-1)
        noise = torch.rand(output.shape, device=output.device, dtype=torch.float32) * 2 - 1
        return output + (noise * bound).to(output.dtype)

    handles = [decoder.register_forward_pre_hook(note, with_kwargs=True), embed.register_forward_hook(add_noise)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["example_lengths", "noisy_embeddings"]
