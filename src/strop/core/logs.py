"""Logging set-up shared by every command and worker process."""
from __future__ import annotations


def quiet_libraries() -> None:
    """Keep library chatter (deprecations, load bars) out of the user's way."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # the non-finite guard wraps optimizer.step on purpose (train/reliability.py)
    warnings.filterwarnings("ignore", message=".*optimizer.step\\(\\)` has been overridden.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU backend warns on every import
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
