"""Lean LoRA / SwiGLU / RMSNorm (patches/fused.py): the same loss and gradients as the stock modules
(to 1e-5 in fp32), fewer tensors kept for backward, and the stock forward wherever they do not apply."""
from __future__ import annotations

import pytest
import torch

from strop.patches import fused
from strop.patches.fused import lean_layers


def _tiny(method="lora", dropout=0.0, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    if method == "lora":
        # init_lora_weights=False: B is random, so every LoRA gradient is non-zero from the first step
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 lora_dropout=dropout, init_lora_weights=False, **lora))
    model.train()
    return model


def _loss_and_grads(model, ids, lean, autocast=False):
    model.zero_grad()
    with lean_layers(model, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _count_calls(monkeypatch):
    calls = {name: 0 for name in ("lora", "swiglu", "swiglu_lora", "rmsnorm")}
    for name, function in list(fused.functions().items()):
        def counted(*args, _f=function, _n=name):
            calls[_n] += 1
            return _f.apply(*args)
        monkeypatch.setitem(fused._FUNCTIONS, name, type(name, (), {"apply": staticmethod(counted)}))
    return calls


@pytest.mark.parametrize("method", ["lora", "full"])
def test_lean_layers_give_the_stock_loss_and_gradients(monkeypatch, method):
    model = _tiny(method)
    ids = torch.randint(0, 101, (2, 19))
    loss_a, grads_a = _loss_and_grads(model, ids, lean=False)
    calls = _count_calls(monkeypatch)
    loss_b, grads_b = _loss_and_grads(model, ids, lean=True)
    # 2 layers: q, k, v, o, gate, up as LoRA linears; SwiGLU with a LoRA down_proj; 2 norms each + the final one
    expected = {"lora": 12, "swiglu": 0, "swiglu_lora": 2, "rmsnorm": 5} if method == "lora" else \
        {"lora": 0, "swiglu": 2, "swiglu_lora": 0, "rmsnorm": 5}
    assert calls == expected
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


def test_lean_layers_restore_the_stock_forward():
    model = _tiny()
    with lean_layers(model) as patched:
        assert patched == 2 * (7 + 1 + 2) + 1
    assert not [m for m in model.modules() if "forward" in m.__dict__ or "_strop_lean" in m.__dict__]
    with lean_layers(model, enabled=False) as patched:
        assert patched == 0


def test_lora_dropout_mask_is_drawn_again_not_stored():
    """With dropout the lean LoRA linear equals plain autograd using the same mask, forward and backward."""
    torch.manual_seed(1)
    x = torch.randn(3, 5, 16, requires_grad=True)
    weight, lora_a, lora_b = torch.randn(24, 16), torch.randn(4, 16, requires_grad=True), torch.randn(24, 4,
                                                                                                       requires_grad=True)
    p, seed, scaling = 0.3, 1234, 2.0
    y = fused.functions()["lora"].apply(x, weight, None, lora_a, lora_b, scaling, p, seed)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, lora_a, lora_b), g)

    mask = fused._dropped(torch.ones(15, 16), p, seed).view(3, 5, 16)  # the seed's mask, scaled by 1/(1-p)
    assert 0.5 < (mask == 0).float().mean() / p < 1.5  # it really drops
    ref = x @ weight.t() + scaling * ((x * mask) @ lora_a.t()) @ lora_b.t()
    want = torch.autograd.grad(ref, (x, lora_a, lora_b), g)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_lean_layers_keep_fewer_tensors_for_backward():
    model = _tiny()
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # the default run: bf16 base, float32 adapters, bf16 autocast
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, 101, (1, 64))

    def saved_bytes(lean):
        seen = {}

        def pack(t):
            key = t.untyped_storage().data_ptr()
            if key not in params:
                seen[key] = t.untyped_storage().nbytes()
            return t
        with lean_layers(model, lean), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        return sum(seen.values())

    stock, lean = saved_bytes(False), saved_bytes(True)
    assert lean < 0.75 * stock, (lean, stock)


@pytest.mark.parametrize("state", ["merged", "disabled", "eval", "dora"])
def test_unusual_adapter_states_keep_the_stock_forward(monkeypatch, state):
    model = _tiny(use_dora=state == "dora")
    ids = torch.randint(0, 101, (1, 12))
    if state == "merged":
        model.merge_adapter()
    if state == "eval":
        model.eval()
    context = model.disable_adapter() if state == "disabled" else torch.enable_grad()
    with context:
        with torch.no_grad() if state == "eval" else torch.enable_grad():
            stock = model(input_ids=ids).logits
        calls = _count_calls(monkeypatch)
        with lean_layers(model), torch.no_grad() if state == "eval" else torch.enable_grad():
            lean = model(input_ids=ids).logits
    assert calls["lora"] == calls["swiglu_lora"] == 0
    torch.testing.assert_close(lean, stock, rtol=0, atol=1e-5)


def _first_layers_checkpointed(model, count):
    from types import SimpleNamespace

    from strop.train.callbacks import CheckpointFirstLayers, checkpointed_layers

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    CheckpointFirstLayers(count).on_train_begin(SimpleNamespace(gradient_checkpointing=True), None, None, model=model)
    assert checkpointed_layers(model) == count


def test_partial_checkpointing_with_lean_dropout_gives_the_same_step():
    """Checkpointing the first layer only recomputes it with the same dropout masks (torch restores the
    RNG state, and the lean LoRA draws its mask seed from it), so loss and gradients do not move."""
    ids = torch.randint(0, 101, (2, 23))
    results = []
    for count in (0, 1):
        model = _tiny(dropout=0.2)
        if count:
            _first_layers_checkpointed(model, count)
        torch.manual_seed(7)
        results.append(_loss_and_grads(model, ids, lean=True))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_checkpoint_layers_option_end_to_end(tiny_model_dir, chat_file, tmp_path):
    import json
    import subprocess

    from conftest import strop_cmd

    base = ["train", "--base-model", str(tiny_model_dir), "--data", str(chat_file), "--max-steps", "2",
            "--report-to", "none", "--val-size", "0", "--gradient-checkpointing", "true"]
    ok = subprocess.run(strop_cmd(*base, "--checkpoint-layers", "1", "--output-dir", str(tmp_path / "a")),
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["checkpointed_layers"] == 1
    bad = subprocess.run(strop_cmd(*base, "--checkpoint-layers", "3", "--output-dir", str(tmp_path / "b")),
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "strop: option checkpoint_layers: 3 is more than the model's 2 decoder layers"


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_dropout_mask_drops_at_rate_p_and_keeps_the_mean(p):
    ones = torch.ones(400, 500)
    dropped = fused._dropped(ones, p, seed=3)
    assert abs((dropped == 0).float().mean().item() - p) < 0.005
    assert abs(dropped.mean().item() - 1.0) < 0.01
    assert torch.equal(dropped, fused._dropped(ones, p, seed=3))  # drawn again, identical
    assert not torch.equal(dropped, fused._dropped(ones, p, seed=4))


def test_lean_lora_linear_with_a_bias_matches_peft():
    """Qwen-style q/k/v projections carry a bias; a trained bias gets its gradient too."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40, bias=True))
    model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights=False))
    model.base_model.model[0].base_layer.bias.requires_grad_(True)
    model.train()
    x = torch.randn(3, 7, 24, requires_grad=True)
    outs = []
    for lean in (False, True):
        model.zero_grad()
        x.grad = None
        with lean_layers(model, lean) as patched:
            assert patched == (1 if lean else 0)
            y = model(x)
            (y * torch.linspace(-1, 1, 40)).sum().backward()
        outs.append([y.detach(), x.grad.clone()] + [p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_lean_layers_stay_on_for_every_step_of_a_run(monkeypatch, tiny_model_dir, chat_file, tmp_path):
    """Every training step of `strop train` runs the lean norms, not only the first: transformers >= 5.2x
    re-kernelizes a model with hub kernels on each train()/eval() switch, which took the patched
    forwards off after step 1 (and made the restore raise) until strop turned hub kernels off."""
    from strop.methods.options import load_train_config
    from strop.train.run import train

    calls = _count_calls(monkeypatch)
    steps = 4
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(chat_file),
                                   "output_dir": str(tmp_path / "run"), "report_to": "none", "method": "lora",
                                   "max_steps": steps, "val_size": 3, "eval_steps": 2, "micro_batch_size": 4})
    train(cfg, progress=False)
    # 2 layers x 2 norms + the final norm = 5 lean norm forwards per step
    assert calls["rmsnorm"] >= 5 * steps, calls
