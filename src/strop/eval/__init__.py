"""Evaluation stage: base against tuned, baselines, forgetting, bias probes, the scale sweep, reports.

Import the submodules directly (``strop.eval.run``, ``strop.eval.likelihood``);
this package imports nothing heavy so ``strop --help`` stays instant.
"""
