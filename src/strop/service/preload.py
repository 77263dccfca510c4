"""Imported once by the forkserver that job processes are forked from (warm.py): the training stack, so
each job has it from the start. bitsandbytes stays unimported here, as in the CLI, so nothing initialises
CUDA before the fork; a 4-bit job imports it in its own process (patches/bnb_import.py)."""
from ..patches import bnb_import

bnb_import.defer()

# torch, transformers, peft, trl, datasets and strop's training code, as a job's first steps import them
from ..data import load  # noqa: E402,F401
from ..methods import options  # noqa: E402,F401
from ..train import preference, preserve, run, sft, sft_data  # noqa: E402,F401
from . import runner  # noqa: E402,F401

import datasets  # noqa: E402,F401
from trl import DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402,F401
