"""Several processes: DDP on CPU (gloo) against one process, the launcher's options, the shipped configs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import strop_cmd
from strop.methods.options import load_train_config
from strop.core.errors import StropError
from strop.train import launch
from strop.core.rundir import RunDir
from strop.train.run import train

EXACT = dict(lora_dropout=0.0, mixed_precision="no", val_size=0, report_to="none", learning_rate=5e-3,
             micro_batch_size=2, logging_steps=1, lr_scheduler_type="constant", warmup_ratio=0,
             preserve="none")  # kl has its own comparison below
STEPS = 48  # 12 rows, 4 per step: 16 epochs; long enough that the SIGTERM lands mid-run


def _values(tiny_model_dir, data, out, **kw) -> dict:
    return {"base_model": str(tiny_model_dir), "data": str(data), "output_dir": str(out), **EXACT, **kw}


def _cli(values: dict) -> list[str]:
    return ["train", *(f"--{k.replace('_', '-')}={v}" for k, v in values.items())]


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in RunDir(run).read_metrics() if "loss" in r]


def _rank_process(launcher: subprocess.Popen, rank: int, deadline: float):
    import psutil

    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children():
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except psutil.Error:
                pass
        time.sleep(0.1)
    raise TimeoutError(f"rank {rank} never started")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_stops_together_and_resumes(tiny_model_dir, chat_file, tmp_path):
    """2 ranks x micro-batch 2 == 1 process x micro-batch 2 x accumulation 2, step for step.

    The 2-process run is stopped by a SIGTERM sent to rank 1 alone: both ranks
    must stop at the same step and checkpoint together; resuming with another
    process count is refused, resuming with 2 finishes the curve.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched rank runs; OpenMP threads spinning on a busy box cost minutes
    try:
        ref = train(load_train_config(None, _values(tiny_model_dir, chat_file, tmp_path / "one", max_steps=STEPS,
                                                    gradient_accumulation_steps=2)), progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "ddp"
    args = _cli(_values(tiny_model_dir, chat_file, out, max_steps=STEPS, gradient_accumulation_steps=1)) + ["--nproc", "2"]
    proc = subprocess.Popen(strop_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    rank1 = _rank_process(proc, 1, deadline)
    while time.monotonic() < deadline and not (out / "metrics.jsonl").is_file():
        time.sleep(0.02)
    rank1.send_signal(signal.SIGTERM)  # not the launcher, not rank 0: the stop must spread
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith("strop: ")]
    assert len(said) == 1 and "SIGTERM" in said[0], err[-3000:]
    ckpt = RunDir(out).latest_checkpoint()
    assert ckpt is not None, "no sealed checkpoint after the stop"
    stopped_at = json.loads((ckpt / "trainer_state.json").read_text())["global_step"]
    assert 1 <= stopped_at < STEPS
    sealed = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert any(name.startswith("rng_state_1") for name in sealed)  # rank 1's part was waited for

    with pytest.raises(StropError, match="started with 2 process"):
        train(load_train_config(None, _values(tiny_model_dir, chat_file, out, max_steps=STEPS, resume=True,
                                              gradient_accumulation_steps=2)), progress=False)
    resumed = subprocess.run(strop_cmd(*args, "--resume"), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    one, two = _losses(ref.root), _losses(out)
    assert [s for s, _ in two] == list(range(1, STEPS + 1))  # every step logged once, by rank 0 only
    diff = max(abs(a - b) for (_, a), (_, b) in zip(one, two))
    print(f"1 vs 2 processes over {STEPS} steps: max loss difference {diff:.3g}")
    assert diff < 1e-4, diff
    s1, s2 = json.loads(ref.summary.read_text()), json.loads(RunDir(out).summary.read_text())
    assert (s2["world_size"], s2["distributed"], s1["world_size"]) == (2, "ddp", 1)
    assert s2["effective_batch_size"] == s1["effective_batch_size"] == 4
    assert s2["tokens_seen"] == s1["tokens_seen"]  # counted over both ranks
    assert s2["lr_schedule"] == s1["lr_schedule"]
    w1, w2 = load_file(ref.final / "adapter_model.safetensors"), load_file(out / "final" / "adapter_model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
    assert not (out / "final.tmp").exists()
    assert json.loads((out / "fingerprint.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])  # the adapter turned off, or a snapshot of the start
def test_two_process_kl_matches_one_process(tiny_model_dir, chat_file, tmp_path, method):
    """``preserve: kl`` under DDP: 2 ranks x micro-batch 2 == 1 process x micro-batch 2 x accumulation 2.

    One process takes the term's own backward after the task's; two take it in the task's backward (a second
    one would meet gradients already reduced). Each rank takes its own general rows, the ones the
    one-process run takes in the same step, so losses, the logged KL and the weights agree."""
    # 0.75 general rows a micro-batch: some micro-batches take one and some none, so in a step one rank may
    # add the term and the other not (the backward then differs between ranks; the all-reduce must not)
    kl = dict(preserve="kl", preserve_ratio=0.375, preserve_weight=4.0, max_steps=8, method=method)
    drop = () if method == "lora" else ("lora_dropout",)  # full fine-tuning has none to turn off

    def values(out, **kw):
        return {k: v for k, v in _values(tiny_model_dir, chat_file, out, **kl, **kw).items() if k not in drop}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train(load_train_config(None, values(tmp_path / "one", gradient_accumulation_steps=2)), progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "ddp"
    done = subprocess.run(strop_cmd(*_cli(values(out, gradient_accumulation_steps=1)),
                                    "--nproc", "2"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = RunDir(ref.root).read_metrics(), RunDir(out).read_metrics()
    logged = [(a["loss"], a.get("preserve_kl", 0), b["loss"], b.get("preserve_kl", 0)) for a, b in zip(one, two) if "loss" in a]
    assert len(logged) == 8 and all(b["step"] == a["step"] for a, b in zip(one, two) if "loss" in a)
    assert max(a[1] for a in logged) > 1e-4  # the tuned model moved away from the base on the general rows
    print("kl, 1 vs 2 processes over 8 steps: max loss difference "
          f"{max(abs(a[0] - a[2]) for a in logged):.3g}, max preserve_kl difference {max(abs(a[1] - a[3]) for a in logged):.3g}"
          f" (preserve_kl up to {max(a[1] for a in logged):.3g})")
    for loss1, kl1, loss2, kl2 in logged:  # a step with no general row on either rank logs no preserve_kl
        assert loss2 == pytest.approx(loss1, abs=1e-4) and kl2 == pytest.approx(kl1, rel=1e-3, abs=1e-6)
    assert json.loads(RunDir(out).data_report.read_text())["preserve"]["mode"] == "kl"
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    w1, w2 = load_file(ref.final / name), load_file(out / "final" / name)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_stop_decisions_reach_every_rank(tmp_path):
    import torch.multiprocessing as mp

    import stop_worker

    mp.spawn(stop_worker.run, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        quiet, signalled, nan = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert quiet == [False, False, None, None]
        assert signalled == [True, True, signal.SIGTERM, None]  # rank 0 stops and saves for rank 1's signal
        assert nan[:2] == [True, False] and nan[3] == 3  # a non-finite update anywhere: all stop, none saves


def test_launcher_reports_a_rank_error_once(tmp_path, capsys):
    (tmp_path / "rank-1.json").write_text(json.dumps({"message": "data.jsonl:3: bad row", "exit_code": 2}))
    assert launch.outcome(tmp_path, ("training process rank 1 failed with exit code 2", 2)) == 2
    assert capsys.readouterr().err == "strop: data.jsonl:3: bad row (rank 1)\n"
    (tmp_path / "rank-0.json").write_text(json.dumps({"message": "stopped by SIGTERM", "exit_code": 143}))
    assert launch.outcome(tmp_path, ("training process rank 0 failed with exit code 143", 143)) == 143
    assert capsys.readouterr().err == ""  # rank 0 printed it already
    assert launch.outcome(tmp_path / "none", ("training process rank 1 failed with exit code -9", -9)) == 1
    assert "rank 1 failed" in capsys.readouterr().err
    assert launch.outcome(tmp_path / "none", None) == 0


# -- the launcher's options -------------------------------------------------------
@pytest.mark.parametrize("options, fragment", [
    ({"nproc": "0"}, "option --nproc: must be at least 1"),
    ({"nproc": "two"}, "option --nproc: cannot use 'two'"),
    ({"nnodes": "2", "node_rank": "2", "main_process_ip": "10.0.0.1", "main_process_port": "29500"}, "option --node-rank"),
    ({"nnodes": "2"}, "option --main-process-ip"),
    ({"distributed": "fsdp2"}, "did you mean fsdp"),
])
def test_launch_option_mistakes_name_the_option(options, fragment):
    with pytest.raises(StropError, match=fragment.replace("(", r"\(")):
        launch.split_launch_options(options)


def test_launch_options_split_from_config_keys_and_build_accelerate_argv():
    opts, rest = launch.split_launch_options({"nproc": "4", "nnodes": "2", "node_rank": "1", "main_process_ip": "10.0.0.1",
                                              "main_process_port": "29555", "learning_rate": "1e-4"})
    assert rest == {"learning_rate": "1e-4"} and opts.world_size == 8 and opts.wanted
    argv = launch.accelerate_argv(opts, Path("c.yaml"), launch.child_args("x.yaml", rest))
    flags = dict(zip(argv[:12:2], argv[1:12:2]))
    assert flags == {"--config_file": "c.yaml", "--num_processes": "8", "--num_machines": "2", "--machine_rank": "1",
                     "--main_process_port": "29555", "--main_process_ip": "10.0.0.1"}
    assert argv[12:] == ["-m", "strop", "train", "x.yaml", "--learning-rate=1e-4"]
    assert not launch.split_launch_options({})[0].wanted  # no launch options: a plain single-process run


def test_sharded_strategies_need_gpus_and_deepspeed():
    with pytest.raises(StropError, match="option --distributed: fsdp needs CUDA"):
        launch.check_hardware("fsdp", cuda=False, deepspeed=False)
    with pytest.raises(StropError, match="deepspeed-zero3 needs the deepspeed package"):
        launch.check_hardware("deepspeed-zero3", cuda=True, deepspeed=False)
    launch.check_hardware("ddp", cuda=False, deepspeed=False)
    with pytest.raises(StropError, match="option --distributed: qlora's 4-bit weights"):
        launch.check_method("fsdp", "qlora")
    with pytest.raises(StropError, match="method adapter saves its weights its own way"):
        launch.check_method("deepspeed", "adapter")
    launch.check_method("ddp", "adapter")
    with pytest.raises(StropError, match="option --distributed: deepspeed needs the deepspeed package"):
        launch.check_hardware(launch.strategy_of(launch.config_file("deepspeed-zero3", "lora")), cuda=True, deepspeed=False)
    assert launch.strategy_of(launch.config_file("fsdp", "lora")) == "fsdp"
    assert launch.strategy_of(launch.config_file("ddp", "lora")) == "ddp"
    assert launch.config_file("fsdp", "full").name == "fsdp2-full.yaml"
    assert launch.config_file("fsdp", "lora").name == "fsdp2-lora.yaml"


def test_cli_refuses_before_launching(tiny_model_dir, chat_file, tmp_path, capsys):
    from strop.cli import main

    base = _cli(_values(tiny_model_dir, chat_file, tmp_path / "r"))
    assert main([*base, "--nproc", "2", "--objective", "dpo"]) == 2
    assert main([*base, "--nproc", "2", "--distributed", "deepspeed-zero2"]) == 2
    assert main([*base, "--nproc", "2", "--distributed", "fsdp", "--preserve", "kl"]) == 2  # sharded weights
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("strop: option ") for line in lines), lines
    assert "preserve: kl runs in one process or under --distributed ddp, not fsdp" in lines[2]


# -- the shipped accelerate configs ------------------------------------------------
CONFIGS = sorted(launch.CONFIG_DIR.glob("*.yaml"))


def _accelerate_view(path: Path):
    """What `accelerate launch --config_file PATH` makes of the file, without starting anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "--num_processes", "2", "--main_process_port", "0",
                              "-m", "strop", "train"])
    return parser, *_validate_launch_command(args)


def _unknown_nested_keys(parser, defaults) -> list[str]:
    """Nested keys accelerate would copy onto its arguments without checking them."""
    dests = {a.dest for a in parser._actions}
    keys = [k if k.startswith("fsdp_") else f"fsdp_{k}" for k in defaults.fsdp_config]
    keys += list(defaults.deepspeed_config)
    return [k for k in keys if k not in dests]


def test_every_strategy_has_a_shipped_config():
    names = {p.name for p in CONFIGS}
    assert set(launch.STRATEGIES.values()) | set(launch.FULL_WEIGHT_FILES.values()) <= names
    import strop

    assert launch.CONFIG_DIR.parent == Path(strop.__file__).parent  # package data: an installed strop has them


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid_for_installed_accelerate(path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    ClusterConfig.from_yaml_file(path)  # refuses unknown top-level keys
    parser, args, defaults, _ = _accelerate_view(path)
    assert _unknown_nested_keys(parser, defaults) == []
    assert defaults.mixed_precision == "no"  # strop's --mixed-precision decides
    if args.use_deepspeed:
        # Build the plugin from the environment the launcher would hand each rank;
        # this needs accelerate only, not deepspeed itself.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        plugin = DeepSpeedPlugin()
        stage = plugin.deepspeed_config["zero_optimization"]["stage"]
        assert f"zero{stage}" in path.name
        assert plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"  # filled from strop's config
        assert plugin.zero3_init_flag is False
    elif args.use_fsdp:
        for k, v in prepare_multi_gpu_env(args).items():
            monkeypatch.setenv(k, v)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and str(plugin.state_dict_type).endswith("FULL_STATE_DICT")
    else:
        assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)


def test_config_check_catches_a_misspelt_nested_key(tmp_path):
    text = (launch.CONFIG_DIR / "deepspeed-zero2-offload.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("offload_optimizer_device", "offload_optimiser_device"))
    parser, _, defaults, _ = _accelerate_view(bad)
    assert _unknown_nested_keys(parser, defaults) == ["offload_optimiser_device"]


def test_resume_with_another_process_count_is_refused(tmp_path):
    from strop.train.distributed import check_resume_world

    fp = tmp_path / "fingerprint.json"
    fp.write_text(json.dumps({"world_size": 2}))
    check_resume_world(fp, 2)
    with pytest.raises(StropError, match=r"started with 2 process\(es\) and this is 4; resume with 2 \(--nproc times"):
        check_resume_world(fp, 4)
    fp.write_text(json.dumps({}))  # runs from before world_size was recorded were single-process
    check_resume_world(fp, 1)
    assert os.environ.get("WORLD_SIZE") in (None, "1")


# -- strop plan --nproc N --distributed S ------------------------------------------
def test_plan_memory_per_device_follows_the_strategy():
    from strop.plan.memory import Setup, breakdown
    from strop.plan.shape import ModelShape

    llama8b = ModelShape(vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                         intermediate=14336, tied=False, bias=False)
    one = breakdown(llama8b, Setup(method="full", dtype="bfloat16", device_kind="cuda"))
    per = {name: breakdown(llama8b, Setup(method="full", dtype="bfloat16", device_kind="cuda", nproc=8, strategy=name))
           for name in ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")}
    ddp, fsdp, z2, z3 = per.values()
    assert ddp["weights"] == one["weights"] and ddp["gradients"] == pytest.approx(2 * one["gradients"], abs=0.1)
    assert fsdp["optimizer"] == pytest.approx(one["optimizer"] / 8, abs=0.1)
    assert fsdp["weights"] == pytest.approx(one["weights"] / 8 + one["weights"] * 2 / 32, abs=0.2)
    assert z2["weights"] == one["weights"] and z2["optimizer"] == 0 and z2["host_offload"] == pytest.approx(one["optimizer"] / 8, abs=0.1)
    assert z3["optimizer"] == 0 and z3["weights"] < fsdp["weights"] and "host_offload" not in fsdp
    assert z3["total"] < fsdp["total"] < z2["total"] < one["total"] < ddp["total"]
    for name, m in per.items():  # activations: every process runs its own micro-batch
        assert m["activations"] == one["activations"], name


def test_plan_command_takes_processes(tiny_model_dir, chat_file, tmp_path):
    from strop.methods.options import load_train_config
    from strop.plan.estimate import make_plan, split_options

    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(chat_file), "val_size": 0})
    one = make_plan(cfg, {"device": "cuda:l4"})
    opts, rest = split_options({"device": "cuda:l4", "nproc": "2", "distributed": "fsdp", "lora_r": "8"})
    assert rest == {"lora_r": "8"}
    two = make_plan(cfg, opts)
    assert two["processes"] == {"nproc": 2, "distributed": "fsdp"}
    assert two["time"]["steps_per_epoch"] == -(-one["time"]["steps_per_epoch"] // 2)
    assert two["memory_mb"]["optimizer"] == pytest.approx(one["memory_mb"]["optimizer"] / 2, abs=0.1)
    with pytest.raises(StropError, match="option --distributed: 'zero3' is not one of"):
        split_options({"distributed": "zero3"})


def test_plan_counts_kl_rows_where_they_train_beside_the_task(tiny_model_dir, chat_file):
    from strop.methods.options import load_train_config
    from strop.plan.cost import PRESERVE_ROW_MAX_TOKENS, preserve_batch_tokens, preserve_tokens_per_epoch

    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(chat_file), "micro_batch_size": 4})
    assert preserve_batch_tokens(cfg) == 0  # one process: the general rows' backward comes after the task's
    assert preserve_batch_tokens(cfg, 2, "ddp") == PRESERVE_ROW_MAX_TOKENS  # ceil(0.125 x 4) rows, held with the task's
    assert preserve_batch_tokens(cfg, 2, "fsdp") == 0 and preserve_tokens_per_epoch(cfg, 40, "fsdp") == ("none", 0)
    assert preserve_tokens_per_epoch(cfg, 40, "ddp")[0] == "kl"
