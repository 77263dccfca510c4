"""The canary for strop's patches: every private name of another library strop touches still exists,
with the parameters strop calls it with (strop.patches.inventory), and each global patch puts the
library back as it found it."""
from __future__ import annotations

import importlib
import inspect

import pytest

from strop.patches.inventory import INVENTORY


def resolve(where: str):
    module, _, attrs = where.partition(":")
    obj = importlib.import_module(module)
    for name in attrs.split("."):
        obj = inspect.getattr_static(obj, name) if isinstance(obj, type) else getattr(obj, name)
    return obj


@pytest.mark.parametrize("touched", INVENTORY, ids=lambda t: t.where)
def test_each_touched_name_still_exists_with_its_parameters(touched):
    try:
        obj = resolve(touched.where)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{touched.where} (used by strop.{touched.used_by}) is gone from the installed library: {exc}")
    if touched.params is None:
        return
    func = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    names = list(inspect.signature(func).parameters)
    assert names[:len(touched.params)] == list(touched.params), (
        f"{touched.where} (used by strop.{touched.used_by}) now takes {names}; strop expects {list(touched.params)} first")


def test_the_fused_class_lists_match_the_inventory():
    from strop.patches import fused

    listed = {t.where.split(":")[1].split(".")[0] for t in INVENTORY if t.used_by == "patches.fused"}
    assert fused.MLP_CLASSES | fused.RMSNORM_CLASSES <= listed


def test_the_lm_head_patch_restores_trl():
    import trl.trainer.utils as tu

    from strop.patches.lm_head import labelled_positions_only

    before = (tu._use_triton, getattr(tu, "_ChunkedLogProbFunction", None), getattr(tu, "_CHUNKED_LOGPROB_CHUNK_SIZE", None))
    with labelled_positions_only(True) as on:
        assert on and tu._use_triton is not before[0]
    assert (tu._use_triton, getattr(tu, "_ChunkedLogProbFunction", None),
            getattr(tu, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)) == before


def test_the_lean_layers_and_attention_patches_restore_the_model(tiny_model_dir):
    from strop import methods
    from strop.core.config import TrainConfig
    from strop.models import load_model
    from strop.patches.fused import lean_layers
    from strop.patches.varlen import per_example_attention

    model = methods.get("lora").wrap(load_model(str(tiny_model_dir), "float32"), TrainConfig())
    forwards = {name: m.forward for name, m in model.named_modules()}
    implementation = model.config._attn_implementation
    with lean_layers(model), per_example_attention(model):
        assert any(m.forward != forwards[name] for name, m in model.named_modules())
    assert all(m.forward == forwards[name] for name, m in model.named_modules())
    assert model.config._attn_implementation == implementation


def test_gguf_loads_in_one_block_share_one_parse_of_each_file(tmp_path):
    """transformers' load_gguf_checkpoint imports gguf.GGUFReader at each call: inside the block the
    second load of a file gets the first one's reader; a writable reader, another file, or a load
    after the block gets its own."""
    import gguf
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from strop.patches.gguf_reader import one_parse_per_file

    paths = []
    for name in ("a", "b"):
        writer = gguf.GGUFWriter(str(tmp_path / f"{name}.gguf"), "llama")
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
            write()
        writer.close()
        paths.append(str(tmp_path / f"{name}.gguf"))
    original = gguf.GGUFReader
    with one_parse_per_file() as readers:
        for _ in range(2):
            try:
                load_gguf_checkpoint(paths[0], return_tensors=False)
            except Exception:  # a two-field file is no model; its header was parsed all the same
                pass
        assert len(readers) == 1
        first = gguf.GGUFReader(paths[0])
        assert gguf.GGUFReader(paths[0]) is first and first.fields["general.architecture"]
        assert gguf.GGUFReader(paths[1]) is not first and len(readers) == 2
        assert gguf.GGUFReader(paths[0], "r+") is not first
    assert gguf.GGUFReader is original and not readers


def test_hub_kernel_requests_are_refused_inside_the_block_and_restored_after():
    kernels = pytest.importorskip("kernels")
    from strop.patches.bnb_import import HubKernelRefused, no_hub_kernels

    original = kernels.get_kernel
    with no_hub_kernels():
        with pytest.raises(HubKernelRefused, match="kernels-community/x"):
            kernels.get_kernel("kernels-community/x", version=1)
    assert kernels.get_kernel is original


def test_loading_peft_after_strop_contacts_no_host():
    """peft imports bitsandbytes whenever it is installed, and bitsandbytes (on AVX-512 BF16 CPUs) asks
    huggingface.co for a kernel while it is imported. A fresh interpreter that imports strop first
    looks up no host at all, and still gets a working bitsandbytes and the real kernels.get_kernel."""
    import subprocess
    import sys

    script = """
import socket
looked_up = []
real = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: looked_up.append(host) or real(host, *a, **k)
import strop, peft
import importlib.util
if importlib.util.find_spec("bitsandbytes"):
    import bitsandbytes, kernels
    assert hasattr(bitsandbytes.nn, "Linear4bit") and kernels.get_kernel.__module__.startswith("kernels")
print("LOOKED_UP", looked_up)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOOKED_UP []" in proc.stdout, proc.stdout
    assert "kernels-community" not in proc.stderr


@pytest.mark.slow
def test_the_strop_command_imports_bitsandbytes_only_for_4bit_weights(tiny_model_dir, tmp_path):
    """A LoRA run through the command never imports bitsandbytes; a QLoRA run in the same process then
    gets it, and peft builds its 4-bit LoRA layers (it cached "not installed" during the first run)."""
    pytest.importorskip("bitsandbytes")
    import json
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": f"hello {i} there"}]}) + "\n"
                            for i in range(4)))
    script = f"""
import sys
from strop import cli
common = ["--base-model", {str(tiny_model_dir)!r}, "--data", {str(data)!r}, "--max-steps", "1", "--report-to", "none"]
assert cli.main(["train", *common, "--output-dir", {str(tmp_path / "lora")!r}]) == 0
assert "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None, "bitsandbytes was imported for LoRA"
import peft.import_utils
assert not peft.import_utils.is_bnb_available()  # peft asked, and cached the answer
assert cli.main(["train", *common, "--method", "qlora", "--output-dir", {str(tmp_path / "qlora")!r}]) == 0
import bitsandbytes, peft.helpers
from peft.tuners.lora.bnb import Linear4bit
from strop.models import load_model
q_proj = load_model({str(tmp_path / "qlora" / "final")!r}).base_model.model.model.layers[0].self_attn.q_proj
assert isinstance(q_proj, Linear4bit) and isinstance(q_proj.base_layer, bitsandbytes.nn.Linear4bit), type(q_proj)
assert peft.helpers.bnb is bitsandbytes
print("CHECKED")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "CHECKED" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_and_prefix_tuning_generate_the_same_with_and_without_the_cache(tiny_model_dir, smol_tokenizer, tmp_path,
                                                                             method):
    """peft injects the soft prompt while it finds no cache under the old argument name; transformers 5.25
    renamed it, so without patches/prompt_cache.py every cached token after the first came from a model
    with the soft prompt in front again. Greedy answers with the cache must equal those without it, and
    differ from the base's (the soft prompt is there), for a model strop wraps and one it loads."""
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from strop import models
    from strop.patches import prompt_cache

    peft_cfg = (PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig)(
        task_type="CAUSAL_LM", num_virtual_tokens=8)
    torch.manual_seed(0)
    wrapped = prompt_cache.install(get_peft_model(models.load_model(str(tiny_model_dir)), peft_cfg)).eval()
    with torch.no_grad():  # a soft prompt strong enough to change the tiny model's answers
        for p in wrapped.prompt_encoder.parameters():
            p.mul_(20)
    wrapped.save_pretrained(tmp_path / "adapter")
    loaded = models.load_model(str(tmp_path / "adapter"))
    base = models.load_model(str(tiny_model_dir)).eval()
    ids = torch.tensor([[11, 42, 7, 99, 5, 63]])

    def greedy(model, cache):
        """The greedy answer, after checking each step's scores against one forward over the whole answer (the
        path training takes, soft prompt in front once)."""
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 use_cache=cache, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
            whole = model(input_ids=out.sequences[:, :-1]).logits[0]
        truth = whole[whole.shape[0] - out.sequences.shape[1] + ids.shape[1]:]  # the positions that chose the answer
        assert torch.allclose(torch.stack(out.logits)[:, 0], truth, atol=1e-4)
        return out.sequences[0, ids.shape[1]:].tolist()

    for model in (wrapped, loaded):
        assert getattr(model, "_strop_prompt_cache", False)
        assert greedy(model, True) == greedy(model, False) != greedy(base, True)

    # the server's batcher runs the base from the soft prompt's keys and values: the same tokens and scores
    from strop.serve.batching import DONE, Batcher, Request

    batcher = Batcher(loaded, eos_token_id=-1)  # no end token: every answer runs its full length
    try:
        req = batcher.submit(Request(ids[0].tolist(), 12, score_prompt=True))
        got = []
        while (tok := req.tokens.get(timeout=60)) is not DONE:
            got.append(tok)
        assert req.error is None and got == greedy(loaded, True)
        with torch.inference_mode():
            logits = loaded(input_ids=ids).logits[0]
        want = torch.log_softmax(logits[logits.shape[0] - ids.shape[1]:-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        assert [s.logprob for s in req.prompt_scores] == pytest.approx(want.tolist(), abs=1e-4)
    finally:
        batcher.close()

    # scoring (perplexity, bias probes): strop's batched NLL equals the model's own labels path, row by row
    from strop.eval.likelihood import token_nll

    rows = [([3, 11, 42, 7, 99, 5, 63, 8, 21, 30, 31, 32, 40, 41, 42, 43, 44, 45, 46, 47],
             [-100] * 8 + [21, 30, 31, 32, 40, 41, 42, 43, 44, 45, 46, 47]),
            ([3, 11, 42, 7, 99, 5, 63, 8, 21, 30, 31, 32, 40, 41, 42, 43, 44, 45, 50, 51, 52, 53],
             [-100] * 10 + [31, 32, 40, 41, 42, 43, 44, 45, 50, 51, 52, 53])]
    nll, count = token_nll(loaded, smol_tokenizer, rows, batch_size=2)
    with torch.inference_mode():
        for (row_ids, labels), got, n in zip(rows, nll, count):
            loss = loaded(input_ids=torch.tensor([row_ids]), labels=torch.tensor([labels])).loss
            assert n == sum(label != -100 for label in labels[1:])
            assert got == pytest.approx(float(loss) * n, rel=1e-4)
