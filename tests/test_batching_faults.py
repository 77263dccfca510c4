"""Faults that belong to one request end that request alone (issue 19, item 5).

A poisoned row (a tiny temperature, a prefill that raises, a pick that raises,
scores that are not finite) sits among healthy greedy rows in one `Batcher`;
the healthy rows must get exactly the tokens they get alone, and the batcher
must go on serving after a failure of the batched forward itself.
"""
from __future__ import annotations

import pytest

from strop.serve.batching import DONE, Batcher, Closed, Request, _pick

PROMPTS = ["Say something about the sea.", "Count to five.", "hello there", "What is 2 plus 2?"]
N = 8


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from strop.models.engine import Engine

    return Engine(str(tiny_model_dir))


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.encode([{"role": "user", "content": p}]) for p in PROMPTS]


@pytest.fixture
def batcher(engine):
    b = Batcher(engine.model, engine.tok.eos_token_id, lock=engine.lock)
    yield b
    b.close()


def drain(req: Request, timeout: float = 60) -> list[int]:
    out = []
    while (tok := req.tokens.get(timeout=timeout)) is not DONE:
        out.append(tok)
    return out


@pytest.fixture(scope="module")
def solo(engine, prompts):
    """Each prompt's greedy answer from a batcher that has nothing else to do."""
    b = Batcher(engine.model, engine.tok.eos_token_id, lock=engine.lock)
    try:
        return [drain(b.submit(Request(ids, N))) for ids in prompts]
    finally:
        b.close()


def submit_together(batcher, engine, reqs: list[Request]) -> list[Request]:
    with engine.lock:  # hold the loop back so every request is admitted into one batch
        for r in reqs:
            batcher.submit(r)
    return reqs


def test_solo_matches_model_generate(engine, prompts, solo):
    import torch

    for ids, want in zip(prompts, solo):
        with torch.inference_mode():
            out = engine.model.generate(input_ids=torch.tensor([ids]),
                                        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=N, min_new_tokens=N, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=engine.tok.pad_token_id)
        assert out[0, len(ids):].tolist()[:len(want)] == want


def test_poisoned_rows_end_alone(batcher, engine, prompts, solo):
    poisoned = {
        "tiny temperature": Request(prompts[0], N, temperature=1e-300, seed=1),
        "tiny temperature, top_p": Request(prompts[1], N, temperature=1e-300, top_p=0.5, seed=2),
        "token id outside the vocabulary": Request([10**7], N),
        "unknown adapter": Request(prompts[2], N, adapter="nope"),
        "pick raises": Request(prompts[3], N, temperature=1.0, top_p="x"),
    }
    healthy = [Request(ids, N) for ids in prompts]
    mixed = [healthy[0], poisoned["tiny temperature"], poisoned["token id outside the vocabulary"], healthy[1],
             poisoned["unknown adapter"], healthy[2], poisoned["pick raises"], poisoned["tiny temperature, top_p"]]
    submit_together(batcher, engine, mixed)
    batcher.submit(healthy[3])  # arrives later, mid-decode
    got = {id(r): (drain(r), r.error) for r in mixed + healthy[3:]}

    for r, want in zip(healthy, solo):
        assert got[id(r)] == (want, None)
    # a temperature too small to divide by is greedy
    assert got[id(poisoned["tiny temperature"])] == (solo[0], None)
    assert got[id(poisoned["tiny temperature, top_p"])] == (solo[1], None)
    for why in ("token id outside the vocabulary", "unknown adapter", "pick raises"):
        tokens, error = got[id(poisoned[why])]
        assert tokens == [] and error is not None, why
    assert isinstance(got[id(poisoned["unknown adapter"])][1], ValueError)


def test_pick_raises_mid_decode_ends_that_row_alone(batcher, engine, prompts, solo):
    class Flaky(Request):
        """Sampling settings that turn bad after three tokens."""
        @property
        def top_p(self):
            return 1.0 if len(self.new) < 3 else float("nan")

        @top_p.setter
        def top_p(self, value):
            pass

    flaky = Flaky(prompts[0], N, temperature=1.0, seed=5)
    healthy = [Request(ids, N) for ids in prompts]
    submit_together(batcher, engine, [healthy[0], flaky, healthy[1], healthy[2], healthy[3]])
    assert len(drain(flaky)) == 3 and isinstance(flaky.error, ValueError)
    assert [drain(r) for r in healthy] == solo and all(r.error is None for r in healthy)


@pytest.mark.parametrize("temperature", [0.0, 1e-300, 1e-30, 1e-6, 1e-3, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("top_p", [1e-9, 0.5, 1.0])
def test_sampling_is_safe_for_every_accepted_value(temperature, top_p):
    import torch

    r = Request([1], 1, temperature, top_p, seed=0)
    r.generator = torch.Generator().manual_seed(0)
    for logits in (torch.randn(50) * 1e4, torch.full((50,), 3e38), torch.tensor([3e38, -3e38] * 25)):
        assert 0 <= _pick(logits, r) < 50
    if temperature < 1e-5:
        assert _pick(torch.arange(50.0), r) == 49  # tiny temperatures are greedy


def test_non_finite_scores_do_not_crash():
    import torch

    greedy, sampled = Request([1], 1), Request([1], 1, 1.0, 0.9, seed=0)
    sampled.generator = torch.Generator().manual_seed(0)
    nan = torch.full((10,), float("nan"))
    nan[7] = 1.0
    inf = torch.zeros(10)
    inf[3] = float("inf")
    for r in (greedy, sampled):
        assert _pick(nan, r) == 7  # NaN is never picked
        assert _pick(inf, r) == 3  # +inf wins
        with pytest.raises(ValueError, match="no finite score"):
            _pick(torch.full((10,), float("nan")), r)


def test_nan_scores_in_the_batch_end_that_row_alone(engine, prompts, solo, monkeypatch):
    """The model's scores for one row turn NaN: that row ends with an error, the others decode on."""
    b = Batcher(engine.model, engine.tok.eos_token_id, lock=engine.lock)
    forward = b._forward
    victim = Request(prompts[0], N)

    def poisoned(ids, mask, cache, positions, adapters):
        logits, cache = forward(ids, mask, cache, positions, adapters)
        rows = b.rows if ids.shape[1] == 1 else [None]
        for i, r in enumerate(rows):
            if r is victim and len(r.new) >= 2:
                logits[i] = float("nan")
        return logits, cache

    b._forward = poisoned
    try:
        healthy = [Request(ids, N) for ids in prompts]
        submit_together(b, engine, [healthy[0], victim, *healthy[1:]])
        assert len(drain(victim)) == 2 and isinstance(victim.error, ValueError)
        assert [drain(r) for r in healthy] == solo
    finally:
        b.close()


def test_batched_forward_failure_fails_the_batch_then_serves_on(engine, prompts, solo):
    b = Batcher(engine.model, engine.tok.eos_token_id, lock=engine.lock)
    forward, boom = b._forward, {"armed": True}

    def failing(ids, mask, cache, positions, adapters):
        if ids.shape[0] > 1 and boom.pop("armed", False):
            raise RuntimeError("out of memory (simulated)")
        return forward(ids, mask, cache, positions, adapters)

    b._forward = failing
    try:
        first = submit_together(b, engine, [Request(ids, N) for ids in prompts[:2]])
        for r in first:
            drain(r)
            assert isinstance(r.error, RuntimeError)
        assert b.thread.is_alive()
        later = [b.submit(Request(ids, N)) for ids in prompts]
        assert [drain(r) for r in later] == solo and all(r.error is None for r in later)
    finally:
        b.close()


def test_close_finishes_or_fails_what_is_in_flight_and_refuses_more(engine, prompts, solo):
    b = Batcher(engine.model, engine.tok.eos_token_id, lock=engine.lock)
    running = b.submit(Request(prompts[0], N))
    b.close(timeout=30)
    assert drain(running, timeout=5) == solo[0] and running.error is None  # finished within the grace time
    assert not b.thread.is_alive() and b.model is None and b.closed
    with pytest.raises(Closed):
        b.submit(Request(prompts[0], N))

    slow = Batcher(engine.model, engine.tok.eos_token_id, lock=engine.lock)
    with engine.lock:  # the loop cannot run: the request is still waiting when the grace time ends
        stuck = slow.submit(Request(prompts[0], N))
        slow.close(timeout=0, wait=False)
    slow.thread.join(10)
    assert not slow.thread.is_alive()
    assert len(drain(stuck, timeout=5)) < N and isinstance(stuck.error, Closed)  # failed, not left hanging


def test_engine_treats_tiny_temperature_as_greedy(engine, prompts):
    """`strop generate` and `strop.load(...)` sample with model.generate: the same rule holds there."""
    greedy = engine.complete_ids(prompts[0], N)
    assert engine.complete_ids(prompts[0], N, temperature=1e-300, seed=1) == greedy
