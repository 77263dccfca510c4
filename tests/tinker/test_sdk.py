"""The official `tinker` SDK, unmodified, as the client of `strop tinker-serve` (tiny model, CPU).

Each test drives the SDK's own calls (ServiceClient, TrainingClient, SamplingClient) over HTTP
against the server in this process, and checks what the model did, not only that calls return.
"""
from __future__ import annotations

import math
import threading
import time

import pytest

tinker = pytest.importorskip("tinker", reason="the tinker SDK is a test dependency (pip install tinker)")
from tinker import types  # noqa: E402

from conftest import free_port  # noqa: E402

KEY = "tml-strop-test-key"
SERVERS: list = []  # the in-process server, for tests that look at its memory


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, monkeypatch_module):
    import uvicorn

    from strop.tinker.app import create_app

    app = create_app(tmp_path_factory.mktemp("tinker"), api_key=KEY)
    SERVERS.append(app.state.server)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    monkeypatch_module.setenv("TINKER_BASE_URL", url)
    monkeypatch_module.setenv("TINKER_API_KEY", KEY)
    monkeypatch_module.setenv("TINKER_TELEMETRY", "0")
    yield url
    server.should_exit = True


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def service(base_url):
    client = tinker.ServiceClient()
    yield client
    client.close("success")


def _datum(tok, prompt: str, answer: str) -> types.Datum:
    p = tok.encode(prompt, add_special_tokens=False)
    a = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
    ids = p + a
    weights = [0.0] * (len(p) - 1) + [1.0] * len(a)
    return types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                       loss_fn_inputs={"target_tokens": ids[1:], "weights": weights})


def _nll(result) -> float:
    return result.metrics["loss:sum"]


def test_supervised_steps_lower_the_loss_and_a_sampler_sees_its_snapshot(service, tiny_model_dir, smol_tokenizer):
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=8)
    assert tc.get_info().model_data.tokenizer_id == str(tiny_model_dir)
    data = [_datum(smol_tokenizer, f"What is {i} plus {i}? ", f"{2 * i}.") for i in range(4)]
    first = tc.forward(data, "cross_entropy").result()
    assert _nll(tc.forward(data, "cross_entropy").result()) == pytest.approx(_nll(first))  # forward leaves no trace
    lp = first.loss_fn_outputs[0]["logprobs"].tolist()
    assert len(lp) == len(data[0].model_input.to_ints()) and all(x <= 0 for x in lp)
    before = tc.save_weights_and_get_sampling_client().result()
    for _ in range(6):
        fb = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        assert fb.result().metrics["loss:sum"] > 0
    after = _nll(tc.forward(data, "cross_entropy").result())
    assert after < 0.8 * _nll(first), (after, _nll(first))
    # the sampler made before training still computes with the weights it was made from
    prompt = types.ModelInput.from_ints(data[0].model_input.to_ints())
    old = before.compute_logprobs(prompt).result()
    now = tc.save_weights_and_get_sampling_client().result().compute_logprobs(prompt).result()
    assert old[0] is None and sum(old[1:]) == pytest.approx(sum(lp[:-1]), abs=1e-3)  # the untrained weights
    assert sum(now[1:]) > sum(old[1:])  # the trained weights find the training text likelier


def test_sampling_returns_tokens_with_their_logprobs(service, tiny_model_dir):
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints([1, 2, 3, 4])
    out = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=5, temperature=1.0, seed=7)).result()
    assert len(out.sequences) == 3
    for seq in out.sequences:
        assert 1 <= len(seq.tokens) <= 5 and len(seq.logprobs) == len(seq.tokens) and all(x <= 0 for x in seq.logprobs)
    # every sampled token's logprob, in every sample of the batch, is what a forward pass gives it
    for seq in out.sequences:
        ids = [1, 2, 3, 4] + seq.tokens
        fwd = tc.forward([types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                                      loss_fn_inputs={"target_tokens": ids[1:]})], "cross_entropy").result()
        assert fwd.loss_fn_outputs[0]["logprobs"].tolist()[3:] == pytest.approx(seq.logprobs, abs=1e-4)
    again = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=5, temperature=1.0, seed=7)).result()
    assert [s.tokens for s in again.sequences] == [s.tokens for s in out.sequences]  # a seed repeats


def test_rl_losses_and_a_custom_loss_run(service, tiny_model_dir):
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    ids = [5, 6, 7, 8]
    fwd = tc.forward([types.Datum(model_input=types.ModelInput.from_ints(ids),
                                  loss_fn_inputs={"target_tokens": ids[1:] + [9], "weights": [1] * 4})],
                     "cross_entropy").result()
    lp = fwd.loss_fn_outputs[0]["logprobs"].tolist()
    on_policy = types.Datum(model_input=types.ModelInput.from_ints(ids),
                            loss_fn_inputs={"target_tokens": ids[1:] + [9], "logprobs": lp, "advantages": [1.0] * 4})
    is_loss = tc.forward([on_policy], "importance_sampling").result().metrics["loss:sum"]
    assert is_loss == pytest.approx(-4.0, abs=1e-3)  # ratio 1 on policy: -sum(advantages)
    ppo = tc.forward_backward([on_policy], "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).result()
    assert ppo.metrics["loss:sum"] == pytest.approx(-4.0, abs=1e-3)

    def off_policy(shift: float) -> types.Datum:  # the sampler gave each token ``shift`` nats less
        return types.Datum(model_input=types.ModelInput.from_ints(ids),
                           loss_fn_inputs={"target_tokens": ids[1:] + [9], "logprobs": [x - shift for x in lp],
                                           "advantages": [1.0] * 4})

    # cispo weighs lp by the clipped ratio: 1 on policy; e^2 = 7.4 clipped to its default 4 off policy
    assert tc.forward([on_policy], "cispo").result().metrics["loss:sum"] == pytest.approx(-sum(lp), abs=1e-3)
    assert tc.forward([off_policy(2.0)], "cispo").result().metrics["loss:sum"] == pytest.approx(-4 * sum(lp), abs=1e-3)
    # dro: -sum(lp * A - beta / 2 * (lp - logprobs)^2)
    dro = tc.forward_backward([off_policy(0.5)], "dro", {"beta": 0.1}).result().metrics["loss:sum"]
    assert dro == pytest.approx(-sum(lp) + 0.5 * 0.1 * 0.25 * 4, abs=1e-3)
    with pytest.raises(tinker.RequestFailedError, match="loss_fn dro: loss_fn_config needs 'beta'"):
        tc.forward([on_policy], "dro").result()
    with pytest.raises(tinker.RequestFailedError, match=r"loss_fn_config\['clip_high_threshold'\]: 'high' is not a number"):
        tc.forward([on_policy], "ppo", {"clip_high_threshold": "high"}).result()
    # gspo: one ratio per sequence, exp(mean log-ratio) over the answer tokens, ppo's clip on it
    shifts = [0.0, 0.3, 0.0, 0.2]  # the first token plays the prompt: logprobs 0, advantage 0

    def answer(shift: list[float], **extra) -> types.Datum:
        return types.Datum(model_input=types.ModelInput.from_ints(ids),
                           loss_fn_inputs={"target_tokens": ids[1:] + [9], "advantages": [0.0, 1.0, 1.0, 1.0],
                                           "logprobs": [0.0] + [x - d for x, d in zip(lp[1:], shift[1:])], **extra})

    seq = math.exp((0.3 + 0.0 + 0.2) / 3)  # 1.18: inside ppo's default [0.8, 1.2]
    assert tc.forward([answer(shifts)], "gspo").result().metrics["loss:sum"] == pytest.approx(-3 * seq, abs=1e-3)
    token_ppo = tc.forward([answer(shifts)], "ppo").result().metrics["loss:sum"]
    assert token_ppo == pytest.approx(-(1.2 + 1.0 + 1.2), abs=1e-3)  # per token, e^0.3 and e^0.2 are clipped
    masked = answer(shifts, sequence_ratio_mask=[0.0, 1.0, 0.0, 0.0])  # the ratio from the second token alone
    assert tc.forward([masked], "gspo").result().metrics["loss:sum"] == pytest.approx(-3 * 1.2, abs=1e-3)
    # a threshold may come per token in loss_fn_inputs: here 1.0 everywhere, so every ratio above 1 is cut
    per_token = answer(shifts, clip_high_threshold=[1.0] * 4)
    assert tc.forward([per_token], "gspo").result().metrics["loss:sum"] == pytest.approx(-3.0, abs=1e-3)
    import torch

    def mean_logprob(data, logprobs):
        loss = -torch.stack([x.mean() for x in logprobs]).mean()
        return loss, {"mean_nll": float(loss.detach())}

    custom = tc.forward_backward_custom([types.Datum(model_input=types.ModelInput.from_ints(ids),
                                                     loss_fn_inputs={"target_tokens": ids[1:] + [9]})],
                                        mean_logprob).result()
    assert custom.metrics["mean_nll"] == pytest.approx(-sum(lp) / 4, abs=1e-3)


def test_saved_state_reloads_with_its_optimizer(service, tiny_model_dir, smol_tokenizer):
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    data = [_datum(smol_tokenizer, "Name? ", "Orrin.")]
    for _ in range(2):
        tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    path = tc.save_state("two").result().path
    assert path == f"tinker://{tc.model_id}/weights/two"
    again = service.create_training_client_from_state_with_optimizer(path).result()
    same = [x["logprobs"].tolist() for x in again.forward(data, "cross_entropy").result().loss_fn_outputs]
    assert same == [x["logprobs"].tolist() for x in tc.forward(data, "cross_entropy").result().loss_fn_outputs]
    # the next step from the reloaded state equals the next step of the original (same Adam moments)
    for client in (tc, again):
        client.forward_backward(data, "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    a = tc.forward(data, "cross_entropy").result().metrics["loss:sum"]
    b = again.forward(data, "cross_entropy").result().metrics["loss:sum"]
    assert a == pytest.approx(b, rel=1e-5)
    named = tc.save_weights_for_sampler("final").result().path
    sampler = service.create_sampling_client(model_path=named).result()
    assert sampler.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2)).result().sequences
    rest = service.create_rest_client()
    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert [(c.checkpoint_id, c.checkpoint_type) for c in listed] == [("weights/two", "training"),
                                                                      ("sampler_weights/final", "sampler")]
    run = rest.get_training_run(tc.model_id).result()
    assert run.base_model == str(tiny_model_dir) and run.lora_rank == 4 and run.last_checkpoint.tinker_path == path
    assert rest.get_weights_info_by_tinker_path(path).result().lora_rank == 4


def test_mistakes_are_clear(service, tiny_model_dir):
    with pytest.raises(Exception, match="not a strop alias, model directory or .gguf file"):
        service.create_lora_training_client(base_model="no/such-model-here", rank=4).result()
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    bad = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={"target_tokens": [2, 3]})
    with pytest.raises(tinker.RequestFailedError, match="target_tokens: 2 values for a 3-token input"):
        tc.forward([bad], "cross_entropy").result()
    # a sampler whose saved weights were deleted before it first sampled: one line, the client's mistake
    named = tc.save_weights_for_sampler("gone").result().path
    sampler = service.create_sampling_client(model_path=named).result()
    service.create_rest_client().delete_checkpoint_from_tinker_path(named).result()
    with pytest.raises(tinker.RequestFailedError, match="sampler weights gone/adapter.safetensors: deleted"):
        sampler.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2)).result()


def test_a_restarted_server_loads_the_saved_states(tmp_path, tiny_model_dir, smol_tokenizer, base_url):
    import uvicorn

    from strop.tinker.app import create_app

    def start(workdir):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(workdir, api_key=KEY), host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        return server, f"http://127.0.0.1:{port}"

    first, url = start(tmp_path)
    service = tinker.ServiceClient(base_url=url)
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    data = [_datum(smol_tokenizer, "Name? ", "Orrin.")]
    tc.forward_backward(data, "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    path = tc.save_state("kept").result().path
    expected = tc.forward(data, "cross_entropy").result().metrics["loss:sum"]
    old_id = next(reversed(first.config.app.state.server.futures))  # a request id that outlives its server
    service.close("success")
    first.should_exit = True
    time.sleep(0.5)
    second, url = start(tmp_path)  # a new process would see the same files: nothing in memory carries over
    try:
        again = tinker.ServiceClient(base_url=url)
        tc2 = again.create_training_client_from_state_with_optimizer(path).result()
        assert tc2.forward(data, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(expected, rel=1e-6)
        again.close("success")
        import httpx  # a client still polling a request of the killed server is told what happened

        reply = httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": old_id}, headers={"X-API-Key": KEY})
        assert reply.status_code == 404 and "made before this server restarted" in reply.text, reply.text
        reply = httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": "nonsense"}, headers={"X-API-Key": KEY})
        assert reply.status_code == 404 and "no such request on this server" in reply.text, reply.text
    finally:
        second.should_exit = True


def test_a_base_that_does_not_fit_in_memory_is_one_line(service, tmp_path, tiny_model_dir, monkeypatch):
    import shutil
    from types import SimpleNamespace

    import psutil

    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)  # a base not loaded yet
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1024))
    with pytest.raises(tinker.RequestFailedError, match=r"needs about .* GiB in float32 and 0.0 GiB is free"):
        service.create_lora_training_client(base_model=str(other), rank=4).result()


def test_names_from_the_client_never_leave_the_workdir(base_url, tiny_model_dir):
    import httpx

    headers = {"X-API-Key": KEY}
    for body in ({"session_id": "../../elsewhere", "model_seq_id": 0, "base_model": "x", "type": "create_model"},
                 {"session_id": "sess", "model_seq_id": 0, "path": "tinker://../weights/x", "type": "load_weights"}):
        route = "create_model" if body["type"] == "create_model" else "load_weights"
        r = httpx.post(f"{base_url}/api/v1/{route}", json=body, headers=headers)
        assert r.status_code == 400 and "\n" not in r.json()["error"]["message"], r.text
    # numbers that are not numbers, from a client that is not the SDK: a 400 naming the field, never a 500
    client = tinker.ServiceClient()  # closed below: an open one keeps sending heartbeats after the server stops
    key = client.create_sampling_client(base_model=str(tiny_model_dir)).result()._sampling_session_id
    client.close("success").result()
    prompt = {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]}
    for field, value in (("num_samples", "two"), ("seq_id", [1]), ("topk_sample_logprobs", 1.5),
                         ("topk_prompt_logprobs", 10_000), ("prompt_logprobs_last_n", 2)):
        r = httpx.post(f"{base_url}/api/v1/asample", headers=headers,
                       json={"sampling_session_id": key, "prompt": prompt, "num_samples": 1, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)


@pytest.mark.slow
def test_a_sampler_per_step_keeps_memory_bounded_and_every_sampler_its_own_weights(service, tiny_model_dir,
                                                                                   smol_tokenizer):
    """An RL loop makes a sampler every step: the model must not gain an adapter per sampler, and the
    oldest sampler, long out of the in-memory cache, still samples with the weights it was made from."""
    from strop.tinker.backend import CACHED_SNAPSHOTS

    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    data = [_datum(smol_tokenizer, f"Name {i}: ", f"item {i}.") for i in range(2)]
    prompt = types.ModelInput.from_ints(data[0].model_input.to_ints())
    samplers, logprobs = [], []
    for _ in range(CACHED_SNAPSHOTS + 4):
        sampler = tc.save_weights_and_get_sampling_client().result()
        samplers.append(sampler)
        logprobs.append(sum(sampler.compute_logprobs(prompt).result()[1:]))
        tc.forward_backward(data, "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=2e-2)).result()
    base = SERVERS[0].workers[str(tiny_model_dir)].base
    training = {c.adapter for c in SERVERS[0].clients.values()}
    others = set(base.peft.peft_config) - training  # the adapters samplers run in: one per LoRA rank in use
    assert others <= {f"sampling_r{c.rank}" for c in SERVERS[0].clients.values()}, others
    assert len(base.snapshot_cache) <= CACHED_SNAPSHOTS
    assert logprobs[-1] > logprobs[0] + 1  # training moved the weights, so the snapshots differ
    again = [sum(s.compute_logprobs(prompt).result()[1:]) for s in (samplers[0], samplers[-1], samplers[1])]
    assert again == pytest.approx([logprobs[0], logprobs[-1], logprobs[1]], abs=1e-4)


def test_gspo_gives_each_token_the_sequence_ratio_with_its_own_gradient():
    import torch

    from strop.tinker.backend import _loss

    lp = torch.tensor([-1.0, -2.0, -0.5, -1.5], requires_grad=True)
    inputs = {"logprobs": [0.0, -2.3, -0.5, -1.6], "advantages": [0.0, 1.0, -2.0, 1.0]}
    _loss("gspo", lp, inputs, {"clip_low_threshold": 0.0, "clip_high_threshold": 10.0}).backward()
    s = math.exp((0.3 + 0.0 + 0.1) / 3)  # the mean log-ratio over the tokens with an advantage
    # d/dlp_t of -(s_t * A_t), with s_t = sg(s) * p_t / sg(p_t): -s * A_t, and nothing flows through s itself
    assert lp.grad.tolist() == pytest.approx([0.0, -s, 2 * s, -s], abs=1e-6)


def test_top_k_logprobs_for_sampled_and_prompt_tokens(service, tiny_model_dir):
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = [1, 2, 3, 4, 5]
    out = sampler.sample(types.ModelInput.from_ints(prompt), 1, types.SamplingParams(max_tokens=4, temperature=0.0),
                         include_prompt_logprobs=True, topk_prompt_logprobs=3, topk_sample_logprobs=5).result()
    seq = out.sequences[0]
    assert len(seq.topk_logprobs) == len(seq.tokens)
    for token, logprob, top in zip(seq.tokens, seq.logprobs, seq.topk_logprobs):
        assert len(top) == 5 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert top[0] == (token, pytest.approx(logprob, abs=1e-5))  # greedy: the sampled token is the top one
    assert out.topk_prompt_logprobs[0] is None and len(out.topk_prompt_logprobs) == len(prompt)
    for target, logprob, top in zip(prompt[1:], out.prompt_logprobs[1:], out.topk_prompt_logprobs[1:]):
        assert len(top) == 3 and top[0][1] >= logprob - 1e-6
        assert all(lp == pytest.approx(logprob, abs=1e-5) for t, lp in top if t == target)
    # only the prompt's last two tokens scored: the SDK checks that nothing before them was
    last = sampler.sample(types.ModelInput.from_ints(prompt), 1, types.SamplingParams(max_tokens=1, temperature=0.0),
                          include_prompt_logprobs=True, prompt_logprobs_last_n=2).result()
    assert last.prompt_logprobs[:3] == [None] * 3
    assert last.prompt_logprobs[3:] == pytest.approx(out.prompt_logprobs[3:], abs=1e-5)
    with pytest.raises(tinker.BadRequestError, match=r"prompt_logprobs_last_n: must be 1..4|prompt_logprobs_last_n: 9"):
        sampler.sample(types.ModelInput.from_ints(prompt), 1, types.SamplingParams(max_tokens=1),
                       include_prompt_logprobs=True, prompt_logprobs_last_n=9).result()


def test_datums_of_different_lengths_batched_give_what_each_gives_alone(service, tiny_model_dir, monkeypatch):
    from strop.tinker import backend

    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    data = [types.Datum(model_input=types.ModelInput.from_ints(ids), loss_fn_inputs={"target_tokens": ids[1:] + [3]})
            for ids in ([5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15, 16])]
    together = tc.forward(data, "cross_entropy").result()
    alone = [tc.forward([d], "cross_entropy").result() for d in data]
    for batched, single in zip(together.loss_fn_outputs, alone):
        assert batched["logprobs"].tolist() == pytest.approx(single.loss_fn_outputs[0]["logprobs"].tolist(), abs=1e-5)
    assert together.metrics["loss:sum"] == pytest.approx(sum(a.metrics["loss:sum"] for a in alone), abs=1e-4)
    monkeypatch.setattr(backend, "BATCH_TOKENS", 8)  # one datum per pass: the same numbers
    split = tc.forward(data, "cross_entropy").result()
    assert split.metrics["loss:sum"] == pytest.approx(together.metrics["loss:sum"], abs=1e-4)
    assert [len(b) for b in backend._batches([backend.Datum([0] * n, {}) for n in (3, 7, 2)], 14)] == [2, 1]


def test_target_prompt_logprobs_dense_and_sparse(service, tiny_model_dir):
    import numpy as np

    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=4)
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints([1, 2, 3, 4, 5])
    params = types.SamplingParams(max_tokens=1, temperature=0.0)
    ref = sampler.sample(prompt, 1, params, include_prompt_logprobs=True, topk_prompt_logprobs=2).result()
    # row i asks at prompt position i + 1: the token that came, and the most likely one; -1 asks nothing
    asked = np.array([[2, ref.topk_prompt_logprobs[1][0][0]], [3, -1], [4, -1], [5, 7]], np.int64)
    dense = sampler.sample(prompt, 1, params, target_prompt_logprobs=types.TensorData.from_numpy(asked)).result()
    got = dense.target_prompt_logprobs.to_numpy()
    assert got.shape == (4, 2) and np.isnan(got[1, 1]) and np.isnan(got[2, 1])
    assert got[:, 0].tolist() == pytest.approx(ref.prompt_logprobs[1:], abs=1e-5)
    assert got[0, 1] == pytest.approx(ref.topk_prompt_logprobs[1][0][1], abs=1e-5)
    # the same cells as sparse CSR come back in the same layout
    sparse = types.TensorData(data=[2, int(asked[0, 1]), 3, 4, 5, 7], dtype="int64", shape=[4, 2],
                              sparse_crow_indices=[0, 2, 3, 4, 6], sparse_col_indices=[0, 1, 0, 0, 0, 1])
    back = sampler.sample(prompt, 1, params, target_prompt_logprobs=sparse).result().target_prompt_logprobs
    assert back.sparse_crow_indices == [0, 2, 3, 4, 6]
    assert back.to_numpy(pad_value=0)[:, 0].tolist() == pytest.approx(got[:, 0].tolist(), abs=1e-6)
    with pytest.raises(tinker.BadRequestError, match=r"target_prompt_logprobs: shape \[3, 2\] for a 5-token prompt"):
        sampler.sample(prompt, 1, params, target_prompt_logprobs=types.TensorData.from_numpy(asked[:3])).result()
    huge = asked.copy()
    huge[3, 1] = 10**9
    with pytest.raises(tinker.RequestFailedError, match="token id 1000000000 is outside the vocabulary"):
        sampler.sample(prompt, 1, params, target_prompt_logprobs=types.TensorData.from_numpy(huge)).result()
