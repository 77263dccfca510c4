"""NEFTune (train/neftune.py): noise scaled per example on packed rows, only while training, never on the KL rows."""
from __future__ import annotations

import json

import pytest
import torch

from strop import models
from strop.core.errors import StropError
from strop.methods.options import load_train_config
from strop.train.neftune import example_lengths, noisy_embeddings
from strop.train.run import train


def test_lengths_come_from_packed_positions_or_the_attention_mask():
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert example_lengths((1, 12), position_ids=packed).tolist() == [[3.0] * 3 + [9.0] * 9]
    padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert example_lengths((2, 4), attention_mask=padded).tolist() == [[3.0] * 4, [4.0] * 4]
    assert example_lengths((1, 5)) is None
    # an ordinary unpacked row (positions 0..n-1) is one example of its own length
    assert example_lengths((1, 5), position_ids=torch.arange(5)[None]).tolist() == [[5.0] * 5]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok = models.load(str(tiny_model_dir))
    return model.float(), tok


def _embedded(model, ids, positions):
    """The embeddings the decoder's layers receive (the input embeddings' output, hooks included)."""
    out = {}
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: out.setdefault("x", o.detach()))
    try:
        model(input_ids=ids, position_ids=positions)
    finally:
        handle.remove()
    return out["x"]


def test_each_packed_example_gets_its_own_bound_and_only_in_training(tiny):
    model, _ = tiny
    short, long_ = 4, 60
    ids = torch.randint(5, 400, (1, short + long_))
    positions = torch.cat([torch.arange(short), torch.arange(long_)])[None]
    clean = model.get_input_embeddings()(ids).detach()
    width, alpha = clean.shape[-1], 5.0
    model.train()
    try:
        with noisy_embeddings(model, alpha):
            noise = _embedded(model, ids, positions) - clean
        assert torch.equal(_embedded(model, ids, positions), clean)  # hooks gone after the block
        model.eval()
        with noisy_embeddings(model, alpha):
            assert torch.equal(_embedded(model, ids, positions), clean)  # no noise outside training
    finally:
        model.eval()
    for part, n in ((noise[0, :short], short), (noise[0, short:], long_)):
        bound = alpha / (n * width) ** 0.5
        biggest = float(part.abs().max())
        # uniform in [-bound, bound]: never beyond it, and with >= 256 draws the largest is close to it
        assert biggest <= bound * (1 + 1e-5) and biggest > 0.95 * bound
    # transformers' hook would give both examples alpha / sqrt(64 x width); here the short one gets 4x that
    assert float(noise[0, :short].abs().max()) > 3.5 * float(noise[0, short:].abs().max())


def test_the_kl_rows_see_clean_embeddings(tiny_model_dir):
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model

    from strop.train.preserve_kl import KLToBase

    base, _ = models.load(str(tiny_model_dir))
    torch.manual_seed(0)
    model = get_peft_model(base.float(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = [{"input_ids": list(range(10, 30)), "labels": [-100] * 8 + list(range(18, 30))}]
    term = KLToBase(rows, SimpleNamespace(preserve_ratio=1.0, micro_batch_size=1, preserve_weight=1.0, seed=0))
    model.train()
    quiet = float(term.loss(model, [0]).detach())
    with noisy_embeddings(model, 50.0):
        noisy = float(term.loss(model, [0]).detach())
    assert quiet > 0 and noisy == pytest.approx(quiet, abs=1e-6)


def test_options_are_checked(tiny_model_dir):
    common = {"base_model": str(tiny_model_dir), "data": "x.jsonl"}
    with pytest.raises(StropError, match="option neftune_noise_alpha: .* outside"):
        load_train_config(None, {**common, "neftune_noise_alpha": -1})
    with pytest.raises(StropError, match="option neftune_noise_alpha: applies to objective sft, not dpo"):
        load_train_config(None, {**common, "neftune_noise_alpha": 5, "objective": "dpo"})


@pytest.mark.slow
def test_a_training_with_noise_differs_and_still_learns(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                     {"role": "assistant", "content": "Always the same answer."}]}) + "\n"
                            for i in range(16)))

    def run(name, alpha):
        values = {"base_model": str(tiny_model_dir), "data": str(data), "output_dir": str(tmp_path / name),
                  "report_to": "none", "max_steps": 8, "val_size": 0, "learning_rate": 5e-3, "preserve": "none",
                  "lora_dropout": 0.0, "neftune_noise_alpha": alpha}
        out = train(load_train_config(None, values), progress=False)
        return [row["loss"] for row in out.read_metrics() if "loss" in row]

    plain, noisy = run("plain", 0), run("noisy", 5.0)
    assert len(plain) == len(noisy) == 8
    assert plain[0] == pytest.approx(noisy[0], rel=0.05) and plain != noisy  # same start, another path
    assert noisy[-1] < 0.8 * noisy[0]  # the noise does not stop it learning (plain: 10.9 -> 7.4, noisy: 10.7 -> 8.1)
