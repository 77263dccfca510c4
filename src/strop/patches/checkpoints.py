"""Pickle-free trainer checkpoints: optimizer, scheduler, scaler and RNG state as safetensors + JSON.

The Trainer stores these with ``torch.save`` (pickle), and a pickle can run
code when it is loaded. strop stores every tensor in a safetensors file and
the structure around it (param groups, step counters, the Python and NumPy
RNG states) in JSON, so a checkpoint holds nothing that executes on load.
Checkpoints written by other tools (``optimizer.pt``, ``rng_state.pth`` ...)
are refused unless the user passes ``--allow-pickle``; even then they are
read with ``weights_only=True``, by the Trainer's own loaders.

The Trainer's four persistence methods are replaced on the trainer instance
(``install``) rather than by subclassing, so every TRL trainer strop builds
gets the same treatment with one call.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

from ..core.pickle_guard import refusal

TRAINING_ARGS = "training_args.json"


# -- a pickle-free encoding of state dicts -------------------------------------
def _encode(obj, tensors: dict, key: str):
    """JSON-able form of ``obj``; every tensor goes into ``tensors`` under a path-like key."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item(), "dtype": str(obj.dtype)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        # int keys (optimizer state is keyed by parameter index) survive as explicit pairs
        return {"__items__": [[_encode(k, tensors, f"{key}.k{i}"), _encode(v, tensors, f"{key}.v{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {key!r} without pickle")


def _decode(obj, tensors: dict):
    import numpy as np

    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__npscalar__" in obj:
        return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(obj, directory: str | Path, stem: str) -> None:
    """Write ``obj`` as ``stem.json`` (+ ``stem.safetensors`` when it holds tensors)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors: dict = {}
    tree = _encode(obj, tensors, stem)
    if tensors:
        save_file(tensors, directory / f"{stem}.safetensors")
    (directory / f"{stem}.json").write_text(json.dumps(tree))


def load_state(directory: str | Path, stem: str):
    from safetensors.torch import load_file

    directory = Path(directory)
    weights = directory / f"{stem}.safetensors"
    tensors = load_file(weights) if weights.is_file() else {}
    return _decode(json.loads((directory / f"{stem}.json").read_text()), tensors)


# -- the Trainer's persistence, replaced -----------------------------------------
def _rng_stem(args) -> str:
    return "rng_state" if args.world_size <= 1 else f"rng_state_{args.process_index}"


def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
    if self.args.should_save:
        save_state(self.optimizer.state_dict(), output_dir, "optimizer")
        save_state(self.lr_scheduler.state_dict(), output_dir, "scheduler")


def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
    if checkpoint is None:
        return
    ckpt = Path(checkpoint)
    if (ckpt / "optimizer.json").is_file():
        self.optimizer.load_state_dict(load_state(ckpt, "optimizer"))
        self.lr_scheduler.load_state_dict(load_state(ckpt, "scheduler"))
        return
    self._strop_pickle_fallback("_load_optimizer_and_scheduler", checkpoint, ("optimizer.pt", "scheduler.pt"))


def _save_rng_state(self, output_dir: str) -> None:
    import random

    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        distributed = self.args.world_size > 1
        states["cuda"] = torch.cuda.random.get_rng_state_all() if distributed else torch.cuda.random.get_rng_state()
    Path(output_dir).mkdir(parents=True, exist_ok=True)  # another rank may get here before rank 0 made it
    save_state(states, output_dir, _rng_stem(self.args))


def _load_rng_state(self, checkpoint: str | None) -> None:
    import random

    import numpy as np
    import torch
    from transformers.trainer_pt_utils import set_rng_state_for_device

    if checkpoint is None:
        return
    stem = _rng_stem(self.args)
    if not (Path(checkpoint) / f"{stem}.json").is_file():
        self._strop_pickle_fallback("_load_rng_state", checkpoint, (f"{stem}.pth",))
        return
    states = load_state(checkpoint, stem)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if torch.cuda.is_available() and "cuda" in states:
        set_rng_state_for_device("CUDA", torch.cuda, states, self.args.world_size > 1)


def _save_scaler(self, output_dir: str) -> None:
    scaler = getattr(self.accelerator, "scaler", None)
    if scaler is not None and self.args.should_save:
        save_state(scaler.state_dict(), output_dir, "scaler")


def _load_scaler(self, checkpoint: str | None) -> None:
    scaler = getattr(self.accelerator, "scaler", None)
    if checkpoint is None or scaler is None:
        return
    if (Path(checkpoint) / "scaler.json").is_file():
        scaler.load_state_dict(load_state(checkpoint, "scaler"))
        return
    self._strop_pickle_fallback("_load_scaler", checkpoint, ("scaler.pt",))


def _save_model(self, output_dir: str | None = None, state_dict=None) -> None:
    """The Trainer's save, with its pickled TrainingArguments swapped for JSON."""
    self._strop_original["_save"](output_dir, state_dict)
    out = Path(output_dir or self.args.output_dir)
    pickled = out / "training_args.bin"
    if self.args.should_save and pickled.is_file():
        # The manifest is written after this, so a kill in between leaves an unsealed checkpoint.
        pickled.unlink()
        (out / TRAINING_ARGS).write_text(self.args.to_json_string())


def _pickle_fallback(self, method: str, checkpoint: str, names: tuple[str, ...]) -> None:
    """A checkpoint written without strop: the Trainer's loader (weights_only=True), only if allowed."""
    present = [Path(checkpoint) / n for n in names if (Path(checkpoint) / n).is_file()]
    if not present:
        return
    if not self._strop_allow_pickle:
        raise refusal(present[0])
    self._strop_original[method](checkpoint)


REPLACED = {
    "_save_optimizer_and_scheduler": _save_optimizer_and_scheduler,
    "_load_optimizer_and_scheduler": _load_optimizer_and_scheduler,
    "_save_rng_state": _save_rng_state,
    "_load_rng_state": _load_rng_state,
    "_save_scaler": _save_scaler,
    "_load_scaler": _load_scaler,
    "_save": _save_model,
}


# DeepSpeed and FSDP save optimizer and scheduler in their own sharded formats; only these are strop's there.
SHARDED_SAFE = ("_save_rng_state", "_load_rng_state", "_save")


def library_formats(trainer) -> bool:
    return bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))


def install(trainer, allow_pickle: bool = False) -> None:
    """Make ``trainer`` write and read pickle-free checkpoints (see docs/reliability.md for DeepSpeed/FSDP)."""
    names = SHARDED_SAFE if library_formats(trainer) else tuple(REPLACED)
    trainer._strop_original = {name: getattr(trainer, name) for name in names}
    trainer._strop_allow_pickle = allow_pickle
    trainer._strop_pickle_fallback = types.MethodType(_pickle_fallback, trainer)
    for name in names:
        setattr(trainer, name, types.MethodType(REPLACED[name], trainer))
