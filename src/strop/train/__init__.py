"""Training stage: one lifecycle for every objective (run.py) on top of TRL; callbacks, reliability,
several processes. Its commands: commands.py (`strop train`)."""
from ..core.rundir import RunDir

__all__ = ["RunDir"]
