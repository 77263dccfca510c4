"""The speed levers must not change the maths: padding-free == padded, to 1e-5 in fp32."""
from __future__ import annotations

import pytest
import torch

from conftest import DEMO_DATA
from strop import models
from strop.data import load
from strop.data.render import render
from strop.models.precision import cpu_bf16_flags


def _loss_and_grads(model, batch):
    model.zero_grad()
    # TRL's compute_loss passes use_cache=False; with a cache, transformers
    # skips the packed-sequence mask, so the test must do the same as training.
    out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def test_padding_free_batch_gives_same_loss_and_gradients(tiny_model_dir, smol_tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    convs = load(DEMO_DATA / "persona_train.jsonl").conversations
    # Different lengths, so the padded batch really pads.
    picked = sorted(convs[:12], key=lambda c: len(c.reference))[::4][:3]
    rows = [vars(render(smol_tokenizer, c, 512)) for c in picked]
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    assert len({len(r["input_ids"]) for r in rows}) > 1

    model = models.load_model(str(tiny_model_dir), "float32")
    model.config._attn_implementation = "sdpa"
    pad_id = smol_tokenizer.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(rows)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert flat["input_ids"].numel() == sum(len(r["input_ids"]) for r in rows)

    loss_a, grads_a = _loss_and_grads(model, {k: padded[k] for k in ("input_ids", "attention_mask", "labels")})
    loss_b, grads_b = _loss_and_grads(model, {k: flat[k] for k in ("input_ids", "position_ids", "labels")})
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


def test_flat_batch_without_positions_would_differ(tiny_model_dir, smol_tokenizer):
    """Guard for the test above: dropping the sequence boundaries must change the loss."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    convs = load(DEMO_DATA / "persona_train.jsonl").conversations[:2]
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in (render(smol_tokenizer, c, 512) for c in convs)]
    model = models.load_model(str(tiny_model_dir), "float32")
    flat = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(rows)
    with torch.no_grad():
        with_bounds = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], labels=flat["labels"],
                            use_cache=False).loss
        without = model(input_ids=flat["input_ids"], labels=flat["labels"], use_cache=False).loss
    assert abs(float(with_bounds) - float(without)) > 1e-4


@pytest.mark.parametrize("text, expected", [
    ("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n", {"avx512_bf16"}),
    ("flags\t\t: fpu avx2\n", set()),
    ("", set()),
])
def test_cpu_bf16_detection(text, expected):
    assert cpu_bf16_flags(text) == expected


def _fused_loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, use_cache=False, fused_lm_head=True)
    loss = -out.log_probs.sum() / out.label_mask.sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("head", ["frozen", "trained"])
def test_scoring_labelled_positions_only_gives_same_loss_and_gradients(tiny_model_dir, smol_tokenizer, monkeypatch, head):
    """The compact LM head (patches/lm_head.py) against TRL's every-position path and the plain full-logits loss.

    A frozen head (adapter methods) takes strop's CPU backward; a trained one (full fine-tuning) TRL's own.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from strop.patches.lm_head import labelled_positions_only

    convs = load(DEMO_DATA / "persona_train.jsonl").conversations[:3]
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in (render(smol_tokenizer, c, 512) for c in convs)]
    flat = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)(rows)
    batch = {k: flat[k] for k in ("input_ids", "position_ids", "labels")}
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"].numel() - 1  # prompts are really masked, so the paths really differ

    import trl.trainer.utils as tu

    from strop.patches import lm_head

    scored = []  # rows each LM-head call projects

    class Spy(tu._ChunkedLogProbFunction):
        @classmethod
        def apply(cls, hidden, *args):
            scored.append(hidden.shape[0])
            return super().apply(hidden, *args)

    monkeypatch.setattr(tu, "_ChunkedLogProbFunction", Spy)
    cpu_backward_calls = []
    real_backward = lm_head._cpu_backward
    monkeypatch.setattr(lm_head, "_cpu_backward", lambda *a: cpu_backward_calls.append(1) or real_backward(*a))
    model = models.load_model(str(tiny_model_dir), "float32")
    model.get_output_embeddings().weight.requires_grad_(head == "trained")
    loss_plain, grads_plain = _loss_and_grads(model, batch)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    loss_every, grads_every = _fused_loss_and_grads(model, batch)
    before = tu._use_triton
    with labelled_positions_only(True) as active:
        assert active
        loss_compact, grads_compact = _fused_loss_and_grads(model, batch)
    assert tu._use_triton is before and tu._ChunkedLogProbFunction is Spy  # restored after the run
    assert cpu_backward_calls == ([1] if head == "frozen" else [])  # which backward the compact run took
    assert scored == [batch["labels"].numel() - 1, labelled]  # every position, then only the labelled ones
    for loss, grads in ((loss_every, grads_every), (loss_compact, grads_compact)):
        torch.testing.assert_close(loss, loss_plain, rtol=0, atol=1e-5)
        assert grads.keys() == grads_plain.keys()
        for name in grads_plain:
            torch.testing.assert_close(grads[name], grads_plain[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("kernel", ["matmul", "sdpa"])
def test_per_example_attention_matches_padded_batch(tiny_model_dir, smol_tokenizer, monkeypatch, kernel):
    """patches/varlen.py: a padding-free row cut at each position reset == the padded batch, to 1e-5.

    ``matmul`` is the written-out attention CPU runs use; ``sdpa`` is the per-example SDPA path CUDA uses.
    """
    from transformers.integrations import sdpa_attention
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from strop.patches import varlen
    from strop.patches.varlen import per_example_attention

    monkeypatch.setattr(varlen, "CPU_MATMUL", "always" if kernel == "matmul" else "never")

    convs = load(DEMO_DATA / "persona_train.jsonl").conversations
    picked = sorted(convs[:12], key=lambda c: len(c.reference))[::4][:3]
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in (render(smol_tokenizer, c, 512) for c in picked)]
    pad_id = smol_tokenizer.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(rows)
    model = models.load_model(str(tiny_model_dir), "float32")
    model.config._attn_implementation = "sdpa"
    loss_a, grads_a = _loss_and_grads(model, {k: padded[k] for k in ("input_ids", "attention_mask", "labels")})

    lengths = []  # query lengths each example's attention sees while the swap is on
    if kernel == "sdpa":
        real = sdpa_attention.sdpa_attention_forward
        monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                            lambda m, q, *a, **kw: lengths.append(q.shape[2]) or real(m, q, *a, **kw))
    else:
        real_cpu = varlen._cpu_causal
        monkeypatch.setattr(varlen, "_cpu_causal",
                            lambda q, k, v, spans, s: lengths.extend(b - a for a, b in spans) or real_cpu(q, k, v, spans, s))
    with per_example_attention(model) as active:
        assert active and model.config._attn_implementation != "sdpa"
        loss_b, grads_b = _loss_and_grads(model, {k: flat[k] for k in ("input_ids", "position_ids", "labels")})
        # a padded batch under the swap still uses its mask (falls through to plain SDPA)
        loss_c, _ = _loss_and_grads(model, {k: padded[k] for k in ("input_ids", "attention_mask", "labels")})
    assert model.config._attn_implementation == "sdpa"  # restored
    per_layer = [len(r["input_ids"]) for r in rows]
    layers = model.config.num_hidden_layers
    assert lengths[: layers * len(rows)] == per_layer * layers  # each example alone, in every layer
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_c, loss_a, rtol=0, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


def test_cpu_lm_head_backward_under_bf16_autocast_matches_trl():
    """Under bf16 autocast strop's CPU backward (one bf16 product per block of rows) stays within bf16
    rounding of TRL's (a float32 product per tile), and runs the same forward."""
    import trl.trainer.utils as tu

    from strop.patches.lm_head import _cpu_backward_function

    torch.manual_seed(0)
    hidden = torch.randn(300, 64)
    weight = torch.randn(5000, 64) * 0.2
    targets = torch.randint(0, 5000, (300,))
    grads = []
    for function in (tu._ChunkedLogProbFunction, _cpu_backward_function(tu._ChunkedLogProbFunction)):
        h = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logprobs = function.apply(h, weight, None, targets, 1.0, 1024, None, 1.0, ())[0]
        (-logprobs.mean()).backward()
        grads.append((logprobs.detach(), h.grad))
    (lp_trl, g_trl), (lp_strop, g_strop) = grads
    torch.testing.assert_close(lp_strop, lp_trl, rtol=0, atol=0)  # same forward
    rel = (g_strop - g_trl).norm() / g_trl.norm()
    assert 0 <= rel < 1e-2, rel


@pytest.mark.parametrize("method, autocast, expected", [
    ("lora", True, "bfloat16"), ("prompt_tuning", True, "bfloat16"), ("adapter", True, "bfloat16"),
    ("full", True, "float32"), ("qlora", True, "float32"), ("lora", False, "float32"),
])
def test_auto_dtype_loads_a_frozen_base_in_bf16_only_under_autocast(method, autocast, expected):
    from types import SimpleNamespace

    from strop.models.precision import load_dtype, weights_dtype

    assert weights_dtype(SimpleNamespace(dtype="auto", method=method), autocast) == expected
    assert weights_dtype(SimpleNamespace(dtype="float32", method=method), autocast) == "float32"  # the switch
    assert load_dtype(SimpleNamespace(dtype="auto")) == "float32"  # evaluation keeps float32


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "adapter"])
def test_bf16_base_trains_float32_master_weights(tiny_model_dir, chat_file, tmp_path, method):
    """dtype bfloat16: frozen weights stay bf16, every trainable one is float32 (what the optimizer updates)."""
    from strop.methods.options import load_train_config
    from strop.train.setup import load_trainable

    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(chat_file), "method": method,
                                   "dtype": "bfloat16", "output_dir": str(tmp_path / "run")})
    model = load_trainable(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and frozen
    assert {p.dtype for p in trainable} == {torch.float32}
    assert {p.dtype for p in frozen} == {torch.bfloat16}


def test_throughput_benchmark_cuda_mode_skips_cleanly_without_a_gpu():
    """benchmarks/train_throughput.py --device cuda must exit 0 with a one-line note where no GPU is visible."""
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the cuda mode would really run")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("skipped:") and len(proc.stdout.strip().splitlines()) == 1


def test_benchmark_flops_per_token_counts_linear_layers_and_head(tiny_model_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import train_throughput
    finally:
        sys.path.pop(0)
    from strop.plan.shape import read_shape

    shape = read_shape(tiny_model_dir)
    expected = 4 * (shape.linear_params() + shape.vocab * shape.hidden)
    assert train_throughput.flops_per_token(str(tiny_model_dir)) == expected
    assert train_throughput.mfu(1000.0, str(tiny_model_dir), "cpu") is None  # only against a GPU's peak


def test_per_example_attention_keeps_sliding_windows(monkeypatch):
    """A window shorter than an example is applied per example (a band mask, not the plain causal cut);
    a window no example outgrows changes nothing, so the plain cut runs (tests/models/ checks the values)."""
    from types import SimpleNamespace

    from strop.patches import varlen

    monkeypatch.setattr(varlen, "CPU_MATMUL", "always")
    monkeypatch.setattr(varlen, "_cpu_causal", lambda *a: (_ for _ in ()).throw(AssertionError("cut")))
    q = torch.randn(1, 2, 6, 4)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    out, _ = varlen._attention(module, q, q, q, None, position_ids=positions, sliding_window=2)
    assert out.shape == (1, 6, 2, 4)
    with pytest.raises(AssertionError, match="cut"):  # without a window the row is cut
        varlen._attention(module, q, q, q, None, position_ids=positions)
    with pytest.raises(AssertionError, match="cut"):  # nor with one as long as the examples
        varlen._attention(module, q, q, q, None, position_ids=positions, sliding_window=3)


def test_cpu_attention_kernel_follows_the_compute_dtype():
    """Written-out attention where the CPU computes in bf16; SDPA's flash kernel for float32 (as fast there)."""
    from strop.patches import varlen

    q32 = torch.zeros(1, 2, 4, 4)
    assert not varlen._use_matmul(q32)
    assert varlen._use_matmul(q32.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert varlen._use_matmul(q32)
