"""Evaluation stage: generation metrics, perplexity, base-vs-tuned comparison.

Import the submodules directly (``strop.metrics``, ``strop.eval.run``);
this package imports nothing heavy so ``strop --help`` stays instant.
"""
