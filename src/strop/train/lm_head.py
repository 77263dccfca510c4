"""Score only the positions the loss uses.

TRL's SFT loss runs the LM head in tiles (never the whole tokens x vocabulary
logits), but off Triton devices it scores *every* position and zeroes the
prompt ones afterwards: on a CPU the prompt tokens cost a full
49,152-entry softmax each, forward and backward, for nothing. TRL does this
because on compiled backends (Neuron) a varying number of positions would
recompile the tiles every batch; eager CPU execution has no such cost.

While a run trains, :func:`labelled_positions_only` makes TRL's fused head
take its compact path (``hidden[mask]``, the path it already uses on CUDA with
Triton) everywhere, leaving the tile kernels themselves as they are. The loss
and gradients are the same sums over the same positions; tests/test_performance.py
checks them against the full path to 1e-5 in fp32. ``score_labelled_only:
false`` turns it off.

It also narrows the head's vocabulary tiles (``VOCAB_TILE``): the same sums in
smaller pieces. It relies on names in ``trl.trainer.utils`` (``_use_triton``,
``_CHUNKED_LOGPROB_CHUNK_SIZE``); when a TRL
version lacks it the run goes on unpatched and says so once.
"""
from __future__ import annotations

import contextlib
import sys

# Vocabulary entries per LM-head tile. TRL uses 32,768; off Triton each tile
# makes several fp32 temporaries of (scored tokens x tile), a gigabyte or
# more of a CPU run's peak at 2,048 tokens (docs/planning.md). A quarter of it
# costs more loop iterations of the same matmul and nothing else. CPU only.
VOCAB_TILE = 4096


@contextlib.contextmanager
def labelled_positions_only(enabled: bool = True):
    if not enabled:
        yield False
        return
    try:
        import trl.trainer.utils as tu
    except ImportError:  # pragma: no cover - TRL is a hard dependency
        yield False
        return
    original = getattr(tu, "_use_triton", None)
    if original is None or not hasattr(tu, "add_fused_lm_head"):
        print("strop: this TRL version has no fused LM head hook; scoring every position", file=sys.stderr)
        yield False
        return

    def compact_everywhere(device):
        return device.type in ("cpu", "cuda") or original(device)

    tu._use_triton = compact_everywhere
    import torch

    # On CUDA the Triton kernel folds each tile in place: TRL's wide tiles are the right size there.
    tile = None if torch.cuda.is_available() else getattr(tu, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
    if tile is not None:
        tu._CHUNKED_LOGPROB_CHUNK_SIZE = min(tile, VOCAB_TILE)
    try:
        yield True
    finally:
        tu._use_triton = original
        if tile is not None:
            tu._CHUNKED_LOGPROB_CHUNK_SIZE = tile
