"""Nothing strop loads can run code: pickles are refused unless allowed (then weights_only), model code needs a pin."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from strop import models
from strop.core.errors import StropError
from strop.models import LoadPolicy
from strop.core.pickle_guard import is_pickle, pickle_files
from strop.patches import checkpoints as checkpoint_io


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def pickled_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with its weights as pytorch_model.bin only (what older tools write)."""
    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


def test_pickle_only_model_is_refused_naming_the_file(pickled_model):
    with pytest.raises(StropError, match=r"pytorch_model\.bin: a pickle file.*--allow-pickle") as err:
        models.load_model(str(pickled_model))
    assert "\n" not in str(err.value)


def test_allow_pickle_loads_tensors_but_never_runs_code(pickled_model, tmp_path):
    model = models.load_model(str(pickled_model), policy=LoadPolicy(allow_pickle=True))
    saved = torch.load(pickled_model / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    marker = tmp_path / "pwned"
    with (pickled_model / "pytorch_model.bin").open("wb") as fh:
        pickle.dump({"w": _Evil(marker)}, fh)
    with pytest.raises(StropError, match="more than tensors"):
        models.load_model(str(pickled_model), policy=LoadPolicy(allow_pickle=True))
    assert not marker.exists()  # weights_only=True refused the payload


def test_adapter_with_pickled_weights_is_refused_by_load_and_serve(tiny_model_dir, tmp_path):
    from strop.serve import adapters

    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir),
                                                       "peft_type": "LORA"}))
    torch.save({}, d / "adapter_model.bin")
    with pytest.raises(StropError, match=r"adapter_model\.bin: a pickle file"):
        models.load_model(str(d))
    with pytest.raises(StropError, match=r"adapter_model\.bin: a pickle file"):
        adapters.parse([f"a={d}"])
    assert adapters.parse([f"a={d}"], allow_pickle=True) == {"a": d.resolve()}


def test_serve_takes_allow_pickle():
    from strop.cli import build_parser

    assert build_parser().parse_args(["serve", "m", "--allow-pickle"]).allow_pickle
    assert not build_parser().parse_args(["serve", "m"]).allow_pickle


def test_pickle_detection_by_name_and_content(tmp_path):
    torch.save({"x": torch.ones(2)}, tmp_path / "state")  # a torch.save zip without a telling suffix
    (tmp_path / "raw").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "x.pth").write_bytes(b"")
    from safetensors.torch import save_file

    save_file({"t": torch.zeros(3)}, tmp_path / "w.safetensors")
    assert [p.name for p in pickle_files(tmp_path)] == ["raw", "state", "x.pth"]
    assert not is_pickle(tmp_path / "w.safetensors")


# -- resume from a checkpoint written by another tool -------------------------
class _FakeTrainer:
    """Just the Trainer surface checkpoint_io replaces, recording the fallbacks it is handed."""

    is_deepspeed_enabled = is_fsdp_enabled = False

    def __init__(self) -> None:
        self.calls = []

    def _save_optimizer_and_scheduler(self, d): ...
    def _save_rng_state(self, d): ...
    def _save_scaler(self, d): ...
    def _load_scaler(self, d): ...
    def _save(self, d=None, state_dict=None): ...

    def _load_optimizer_and_scheduler(self, d):
        self.calls.append(("optimizer", d))

    def _load_rng_state(self, d):
        self.calls.append(("rng", d))


def test_foreign_trainer_pickles_refused_unless_allowed(tmp_path):
    from types import SimpleNamespace

    from strop.train.reliability import check_resume

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.pt")
    torch.save({}, ckpt / "scheduler.pt")
    torch.save({}, ckpt / "rng_state.pth")
    with pytest.raises(StropError, match=r"optimizer\.pt: a pickle file"):
        check_resume(ckpt, SimpleNamespace(allow_pickle=False))
    check_resume(ckpt, SimpleNamespace(allow_pickle=True))

    refused, allowed = _FakeTrainer(), _FakeTrainer()
    for trainer, allow in ((refused, False), (allowed, True)):
        trainer.args = SimpleNamespace(world_size=1, process_index=0)
        checkpoint_io.install(trainer, allow_pickle=allow)
    with pytest.raises(StropError, match=r"optimizer\.pt"):
        refused._load_optimizer_and_scheduler(str(ckpt))
    with pytest.raises(StropError, match=r"rng_state\.pth"):
        refused._load_rng_state(str(ckpt))
    allowed._load_optimizer_and_scheduler(str(ckpt))
    allowed._load_rng_state(str(ckpt))
    assert allowed.calls == [("optimizer", str(ckpt)), ("rng", str(ckpt))]  # the Trainer's weights_only loaders


def test_state_round_trips_exactly_without_pickle(tmp_path):
    import random

    import numpy as np

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(2):
        sum(p.sum() for p in params).backward()
        opt.step()
        sched.step()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    for stem, obj in (("optimizer", opt.state_dict()), ("scheduler", sched.state_dict()), ("rng", rng)):
        checkpoint_io.save_state(obj, tmp_path, stem)
    assert not pickle_files(tmp_path)
    back = checkpoint_io.load_state(tmp_path, "optimizer")
    assert back["param_groups"] == opt.state_dict()["param_groups"]  # betas stay a tuple
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            assert torch.equal(back["state"][i][k], v)
    assert checkpoint_io.load_state(tmp_path, "scheduler") == sched.state_dict()
    rng_back = checkpoint_io.load_state(tmp_path, "rng")
    assert rng_back["python"] == rng["python"]
    assert np.array_equal(rng_back["numpy"][1], rng["numpy"][1]) and rng_back["numpy"][2:] == rng["numpy"][2:]
    assert torch.equal(rng_back["cpu"], rng["cpu"])
    random.setstate(rng_back["python"])  # each library accepts its restored state
    np.random.set_state(rng_back["numpy"])
    torch.random.set_rng_state(rng_back["cpu"])


# -- model code ------------------------------------------------------------------
@pytest.fixture
def custom_code_model(tiny_model_dir, tmp_path) -> Path:
    d = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, d)
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(config))
    (d / "modeling_evil.py").write_text("import os\nos.system('touch pwned')\n")
    return d


def test_model_code_refused_by_default(custom_code_model):
    with pytest.raises(StropError, match=r"ships its own Python code \(auto_map in config.json\).*trust_remote_code"):
        models.load_model(str(custom_code_model))
    with pytest.raises(StropError, match="trust_remote_code"):
        models.load_tokenizer(str(custom_code_model))


def test_trust_remote_code_needs_the_pinned_code(custom_code_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    with pytest.raises(StropError, match=r"option model_revision: the Python code in .* hashes to [0-9a-f]{64}"):
        models.load_model(str(custom_code_model), policy=LoadPolicy(trust_remote_code=True, revision="0" * 64))
    seen = {}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, **kw: seen.update(kw) or "model")
    pin = models.code_digest(custom_code_model)
    assert models.load_model(str(custom_code_model), policy=LoadPolicy(trust_remote_code=True, revision=pin)) == "model"
    assert seen["trust_remote_code"] is True and seen["use_safetensors"] is True
    (custom_code_model / "modeling_evil.py").write_text("# changed after review\n")
    with pytest.raises(StropError, match="model_revision"):
        models.load_model(str(custom_code_model), policy=LoadPolicy(trust_remote_code=True, revision=pin))


def test_hub_model_code_needs_a_commit_hash():
    with pytest.raises(StropError, match="40-character commit hash"):
        models._code_kwargs("org/model", LoadPolicy(trust_remote_code=True, revision="main"))
    sha = "a" * 40
    assert models._code_kwargs("org/model", LoadPolicy(trust_remote_code=True, revision=sha)) == \
        {"trust_remote_code": True, "revision": sha}
    assert models._code_kwargs("org/model", LoadPolicy()) == {"trust_remote_code": False}


def test_trust_remote_code_option_requires_revision(capsys):
    from strop.cli import main

    assert main(["train", "--data", "x.jsonl", "--trust-remote-code", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("strop: option trust_remote_code: needs model_revision") and "\n" not in err
