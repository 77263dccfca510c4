"""Training stage: SFT runs on top of TRL, run directories, callbacks."""
from ..core.rundir import RunDir

__all__ = ["RunDir"]
