"""`strop train --nproc N`: start the run as N processes under accelerate's launcher.

This process becomes the launcher (accelerate's ``launch_command``, which
runs torchrun's agent in-process) and starts ``python -m strop train ...``
once per rank with the launch options taken out; the ranks find each other
through the variables torchrun sets (see train/distributed.py). The
strategy (DDP, FSDP2, DeepSpeed ZeRO-2/3) comes from a shipped accelerate
config file in ``strop/distributed_configs/`` (shipped with the package) or from a file the user names.

Errors: a launched rank that stops on a StropError records it in a status
directory shared with this process; rank 0 prints it, and this process
exits with the same code, so `strop train --nproc 2` fails the way a
single-process run does (one line, the same exit code) and never shows the
launcher's own traceback.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StropError
from ..core.suggest import did_you_mean

STATUS_ENV = "STROP_LAUNCH_STATUS"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "distributed_configs"  # package data: `pip install .` has it
# --distributed NAME -> shipped accelerate config; fsdp picks by method (full weights vs adapters).
STRATEGIES = {
    "ddp": "ddp.yaml",
    "fsdp": "fsdp2-lora.yaml",
    "deepspeed-zero2": "deepspeed-zero2-offload.yaml",
    "deepspeed-zero3": "deepspeed-zero3-offload.yaml",
}
FULL_WEIGHT_FILES = {"fsdp": "fsdp2-full.yaml"}
# Options of the launcher itself; every other --key is a training config key.
LAUNCH_OPTIONS = {"nproc": int, "nnodes": int, "node_rank": int, "main_process_ip": str,
                  "main_process_port": int, "distributed": str}
# Seconds a rank gets, after SIGTERM reaches the launcher, to checkpoint and exit before SIGKILL.
SHUTDOWN_GRACE_S = "120"


@dataclass
class LaunchOptions:
    nproc: int = 1  # processes on this node
    nnodes: int = 1
    node_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int = 0  # 0: a free port (single node only)
    distributed: str = "ddp"

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def wanted(self) -> bool:
        """Whether to start launched processes at all (one DDP process is a plain run)."""
        return self.world_size > 1 or self.distributed != "ddp"

    def validate(self) -> "LaunchOptions":
        for name in ("nproc", "nnodes"):
            if getattr(self, name) < 1:
                raise StropError(f"option --{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.node_rank < self.nnodes:
            raise StropError(f"option --node-rank: must be in 0..{self.nnodes - 1} for --nnodes {self.nnodes}, got {self.node_rank}")
        if self.nnodes > 1 and not (self.main_process_ip and self.main_process_port):
            raise StropError("option --main-process-ip: multi-node runs need --main-process-ip and --main-process-port "
                             "(the address of the node with --node-rank 0, the same on every node)")
        if self.distributed not in STRATEGIES and not Path(self.distributed).is_file():
            hint = did_you_mean(self.distributed, STRATEGIES, n=2)
            raise StropError(f"option --distributed: {self.distributed!r} is neither a strategy nor an accelerate "
                             f"config file{hint} (strategies: {', '.join(STRATEGIES)})")
        return self


def split_launch_options(overrides: dict) -> tuple[LaunchOptions, dict]:
    """Separate launcher options from config overrides (both still text, as parse_overrides gives them)."""
    launch, train = {}, {}
    for key, value in overrides.items():
        if key in LAUNCH_OPTIONS:
            try:
                launch[key] = LAUNCH_OPTIONS[key](value)
            except ValueError:
                raise StropError(f"option --{key.replace('_', '-')}: cannot use {value!r}") from None
        else:
            train[key] = value
    return LaunchOptions(**launch).validate(), train


def check_resume_world(fingerprint_path: Path, size: int) -> None:
    """Refuse to resume with another number of processes than the run started with.

    The data order, each rank's saved RNG state and (with FSDP/DeepSpeed) the
    optimizer shards all depend on it, so a different count would quietly train
    on another sequence of batches than the one being continued.
    """
    if not fingerprint_path.is_file():
        return  # check_fingerprint reports the missing file
    started = json.loads(fingerprint_path.read_text()).get("world_size", 1)
    if started != size:
        raise StropError(f"cannot resume: the run started with {started} process(es) and this is {size}; "
                         f"resume with {started} (--nproc times --nnodes), or start a new --output-dir")


def config_file(strategy: str, method: str) -> Path:
    """The accelerate config for a strategy name, or the user's own file."""
    if strategy not in STRATEGIES:
        return Path(strategy)
    name = FULL_WEIGHT_FILES.get(strategy, STRATEGIES[strategy]) if method == "full" else STRATEGIES[strategy]
    path = CONFIG_DIR / name
    if not path.is_file():
        raise StropError(f"option --distributed: {path} is missing from this installation of strop; "
                         "pass the path of an accelerate config file instead")
    return path


def strategy_of(config: Path) -> str:
    """The strategy an accelerate config file asks for, in --distributed's names."""
    from ..core.config import load_yaml

    kind = str(load_yaml(config).get("distributed_type", "MULTI_GPU")).upper()
    return {"FSDP": "fsdp", "DEEPSPEED": "deepspeed"}.get(kind, "ddp")


def check_method(strategy: str, method: str) -> None:
    """Methods whose weights FSDP/DeepSpeed cannot handle; DDP takes every method."""
    from ..methods import METHODS

    m = METHODS[method]
    if strategy != "ddp" and m.load_in_4bit:
        raise StropError(f"option --distributed: {method}'s 4-bit weights cannot be split by {strategy}; use ddp")
    if strategy != "ddp" and m.save is not None:
        raise StropError(f"option --distributed: method {method} saves its weights its own way, which cannot "
                         f"gather them from {strategy}'s shards; use ddp")


def check_hardware(strategy: str, *, cuda: bool, deepspeed: bool) -> None:
    """Sharded strategies need GPUs (and DeepSpeed its package); DDP runs anywhere, with gloo on CPU."""
    if strategy.startswith("deepspeed") and not deepspeed:
        raise StropError(f"option --distributed: {strategy} needs the deepspeed package (pip install deepspeed) "
                         "and CUDA GPUs; on CPU use ddp")
    if strategy != "ddp" and not cuda:
        raise StropError(f"option --distributed: {strategy} needs CUDA GPUs; on CPU use ddp")


def accelerate_argv(opts: LaunchOptions, config: Path, child_args: list[str]) -> list[str]:
    """Arguments for ``accelerate launch``: the config file, then the process layout, then the ranks' command."""
    argv = ["--config_file", str(config), "--num_processes", str(opts.world_size),
            "--num_machines", str(opts.nnodes), "--machine_rank", str(opts.node_rank),
            "--main_process_port", str(opts.main_process_port)]
    if opts.main_process_ip:
        argv += ["--main_process_ip", opts.main_process_ip]
    return argv + ["-m", "strop", *child_args]


def child_args(config_path: str | None, overrides: dict) -> list[str]:
    """The `strop train` command each rank runs: the same config and overrides, no launch options."""
    return ["train", *([config_path] if config_path else []), *(f"--{k.replace('_', '-')}={v}" for k, v in overrides.items())]


def _child_env(opts: LaunchOptions, status: str) -> dict[str, str]:
    # torchrun starts each rank in a session of its own, so a terminal's Ctrl-C or a
    # `kill` reaches this process only; it forwards the signal once to every rank,
    # which checkpoints and stops (reliability.GracefulStop), then waits this long.
    env = {STATUS_ENV: status}
    keep = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": SHUTDOWN_GRACE_S,
            # torchrun would pin every rank to one thread; share the cores out instead.
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // opts.nproc))}
    return env | {k: v for k, v in keep.items() if k not in os.environ}


def start(opts: LaunchOptions, cfg, config_path: str | None, overrides: dict) -> int:
    """Check what can be checked once, here, then launch the ranks."""
    import importlib.util

    import torch

    from ..core.rundir import RunDir
    from ..methods.preserve import check_strategy

    if cfg.objective != "sft":
        raise StropError(f"option --nproc: multi-process runs support objective sft; {cfg.objective} runs in one process")
    if cfg.resume:
        check_resume_world(RunDir(Path(cfg.output_dir)).fingerprint, opts.world_size)
    config = config_file(opts.distributed, cfg.method)
    strategy = strategy_of(config)
    check_method(strategy, cfg.method)
    check_strategy(cfg, strategy)  # before launching: each rank would refuse it too (train/sft.check)
    check_hardware(strategy, cuda=torch.cuda.is_available(),
                   deepspeed=importlib.util.find_spec("deepspeed") is not None)
    return launch(opts, config, child_args(config_path, overrides))


def launch(opts: LaunchOptions, config: Path, args: list[str]) -> int:
    """Run ``strop ARGS`` as ``opts.world_size`` processes; return the exit code a plain run would have."""
    import logging
    import tempfile
    from unittest import mock

    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # The agent logs every rank's exit and its own shutdown; strop reports the outcome itself.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="strop-launch-") as status:
        parsed = launch_command_parser().parse_args(accelerate_argv(opts, config, args))
        failure = None
        with mock.patch.dict(os.environ, _child_env(opts, status)):
            try:
                launch_command(parsed)
            except ChildFailedError as exc:
                rank, first = exc.get_first_failure()
                failure = f"training process rank {rank} failed with exit code {first.exitcode}", first.exitcode
            except SignalException as exc:
                failure = f"stopped by {exc.sigval.name} before the processes could checkpoint", 128 + int(exc.sigval)
            except KeyboardInterrupt:
                failure = "interrupted", 130
            except ValueError as exc:  # accelerate's own checks of the config and layout
                raise StropError(f"option --distributed: accelerate refused {config}: {exc}") from None
        return outcome(Path(status), failure)


def outcome(status: Path, failure: tuple[str, int] | None) -> int:
    """Exit code (and message, unless rank 0 printed it) from the ranks' status files."""
    import sys

    reports = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in status.glob("rank-*.json")}
    if 0 in reports:
        return reports[0]["exit_code"]  # rank 0 printed its message already
    if reports:
        rank = min(reports)
        print(f"strop: {reports[rank]['message']} (rank {rank})", file=sys.stderr)
        return reports[rank]["exit_code"]
    if failure is None:
        return 0
    message, code = failure
    print(f"strop: {message}", file=sys.stderr)
    return code if 0 < code < 256 else 1


def report_in_child(exc: StropError) -> bool:
    """In a launched rank, record ``exc`` for the launcher; True when this rank should not print it too."""
    status = os.environ.get(STATUS_ENV)
    if not status or not Path(status).is_dir():
        return False
    rank = int(os.environ.get("RANK", 0))
    Path(status, f"rank-{rank}.json").write_text(json.dumps({"message": str(exc), "exit_code": exc.exit_code}))
    return rank != 0
