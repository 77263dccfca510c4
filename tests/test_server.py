"""The OpenAI-compatible server, exercised with the official `openai` client
against a real uvicorn server (in a background thread) serving the tiny Llama."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest

from conftest import free_port

MESSAGES = [{"role": "user", "content": "Say something about the sea."}]
KEY = "sk-test-123"
# The random tiny model answers greedy prompts with newlines only; seeded sampling gives varied
# text (the same on both paths), which makes stream and stop comparisons mean something.
SAMPLED = {"temperature": 1.0, "seed": 3}


@contextmanager
def serving(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if getattr(app.state, "batcher", None) is not None:
            app.state.batcher.close()  # its scheduler thread would outlive the test


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from strop.models.engine import Engine

    return Engine(str(tiny_model_dir))


@pytest.fixture(scope="module")
def base_url(engine):
    from strop.serve.server import create_app

    with serving(create_app(engine, model_id="tiny")) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_model_id_defaults_to_directory_name(engine, tiny_model_dir):
    from strop.serve.server import create_app

    assert create_app(engine).state.model_id == tiny_model_dir.name


def test_chat_usage(client, engine):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens == len(engine.encode(MESSAGES))
    assert 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_greedy_matches_engine(client, engine):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=16)
    assert r.choices[0].message.content == engine.chat(MESSAGES, max_new_tokens=16).text


def test_seed_makes_sampling_repeatable(client):
    texts = {client.chat.completions.create(messages=MESSAGES, model="tiny", max_tokens=10, temperature=1.0,
                                            top_p=0.9, seed=7).choices[0].message.content for _ in range(2)}
    assert len(texts) == 1


def test_stream_matches_non_streaming(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, **SAMPLED)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}, **SAMPLED))
    assert len(set(plain.choices[0].message.content)) > 3  # not the trivial all-newline answer
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1


def test_stream_raw_sse(base_url):
    body = {"messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and all(e.startswith("data: ") for e in events[:-1])
    assert events[-2] == "data: [DONE]"
    last = json.loads(events[-3][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "usage" not in last


def test_stop_string_cuts_both_ways(client):
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24,
                                          **SAMPLED).choices[0].message.content
    assert len(full) >= 12, full
    stop = full[6:9]
    expected = full[: full.find(stop)]
    assert expected.strip()
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, stop=[stop, "a stop string never produced"],
                                       **SAMPLED)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (expected, "stop")
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, stop=stop,
                                                 stream=True, stream_options={"include_usage": True}, **SAMPLED))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage == r.usage


def test_stop_filter_holds_back_partial_matches():
    from strop.serve.server import StopFilter

    f = StopFilter(["END"])
    assert f.feed("abc E") == ("abc ", False)
    assert f.feed("N") == ("", False)
    assert f.feed("x") == ("ENx", False)
    assert f.feed("yEND z") == ("y", True)


def test_auth(engine):
    from strop.serve.server import create_app

    with serving(create_app(engine, model_id="tiny", api_key=KEY)) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
        right = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert right.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).usage.completion_tokens


def test_prompt_too_long(client, engine):
    messages = [{"role": "user", "content": "hello " * 1100}]
    n = len(engine.encode(messages))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert err.value.status_code == 400
    assert str(n) in err.value.message and str(engine.context_length) in err.value.message


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert err.value.code == "model_not_found"


def test_n_choices(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, n=3, temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # seeds seed, seed+1, ...: different samples
    for bad in ({"n": 9}, {"n": 2, "stream": True}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, **bad)
        assert err.value.param == "n"


def test_validation_errors_use_openai_shape(base_url):
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": [{"role": "user"}], "temperature": 9})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(f"{base_url}/nope").json()["error"]["message"]
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": MESSAGES, "stop": ["a"] * 17})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"


# -- logprobs, echo, several prompts, tokenizer routes (what lm-evaluation-harness's local-completions uses) --
def _forward_logprobs(engine, ids):
    import torch

    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1)


def test_echo_scores_the_prompt_like_a_forward(base_url, engine):
    ids = engine.tok("The sea is wide and the ships are slow.", add_special_tokens=False)["input_ids"]
    body = {"model": "tiny", "prompt": [ids], "echo": True, "logprobs": 3, "max_tokens": 0}
    r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["token_logprobs"]) == len(ids) and lp["tokens"] == [engine.tok.decode([i]) for i in ids]
    want = _forward_logprobs(engine, ids)
    for t in range(1, len(ids)):
        assert abs(lp["token_logprobs"][t] - float(want[t - 1, ids[t]])) < 1e-4
        best = max(lp["top_logprobs"][t].values())
        assert abs(best - float(want[t - 1].max())) < 1e-4 and len(lp["top_logprobs"][t]) <= 4
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])
    assert r.json()["choices"][0]["text"] == engine.tok.decode(ids)
    assert r.json()["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}


def test_loglikelihood_request_as_lm_eval_sends_it(base_url, engine):
    """lm-eval's payload: token-id prompts, echo, logprobs 1, max_tokens 1; it sums token_logprobs[ctxlen:-1]."""
    ctx = engine.tok("Question: what colour is the sky? Answer:", add_special_tokens=False)["input_ids"]
    conts = [engine.tok(c, add_special_tokens=False)["input_ids"] for c in (" blue", " green and wet")]
    body = {"model": "tiny", "prompt": [ctx + c for c in conts], "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": 1234, "echo": True}
    choices = sorted(httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).json()["choices"],
                     key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    for cont, choice in zip(conts, choices):
        ids = ctx + cont
        want = _forward_logprobs(engine, ids)
        got = sum(choice["logprobs"]["token_logprobs"][len(ctx):-1])
        assert abs(got - sum(float(want[t - 1, ids[t]]) for t in range(len(ctx), len(ids)))) < 1e-3
        assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1  # the one generated token (or the end)
        greedy = all(choice["logprobs"]["token_logprobs"][t] == max(choice["logprobs"]["top_logprobs"][t].values())
                     for t in range(len(ctx), len(ids)))
        assert greedy == all(int(want[t - 1].argmax()) == ids[t] for t in range(len(ctx), len(ids)))


def test_several_prompts_each_as_alone(client):
    prompts = ["The harbour at dawn", "A list of fruit:", "Once upon a time"]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=5).choices[0].text for p in prompts]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, n=2, **SAMPLED)
    assert [c.index for c in r.choices] == list(range(6))
    greedy = client.completions.create(model="tiny", prompt=prompts, max_tokens=5)
    assert [c.text for c in greedy.choices] == alone
    assert greedy.usage.completion_tokens <= 15


def test_generated_logprobs_match_a_forward(client, engine):
    """Each sampled token's logprob is the model's own (before temperature) given the tokens before it."""
    text = "Tell me about boats"
    r = client.completions.create(model="tiny", prompt=text, max_tokens=6, logprobs=2, **SAMPLED)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == len(text)
    by_text: dict[str, list[int]] = {}
    for i, piece in enumerate(engine.tok.batch_decode([[i] for i in range(len(engine.tok))])):
        by_text.setdefault(piece, []).append(i)
    ids = engine.tok(text, add_special_tokens=False)["input_ids"]
    for piece, value in zip(lp.tokens, lp.token_logprobs):  # the text alone does not say which ids were sampled
        want = _forward_logprobs(engine, ids)[-1]
        match = [i for i in by_text[piece] if abs(value - float(want[i])) < 1e-3]
        assert match, (piece, value)
        ids.append(match[0])


def test_chat_logprobs_plain_and_streamed(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, logprobs=True,
                                           top_logprobs=2, **SAMPLED)
    content = plain.choices[0].logprobs.content
    assert "".join(t.token for t in content) == plain.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)
    assert all(bytes(t.bytes) == t.token.encode() for t in content)
    chunks = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, logprobs=True,
                                            top_logprobs=2, stream=True, **SAMPLED)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 5)) for t in streamed] == [(t.token, round(t.logprob, 5)) for t in content]
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices[0].logprobs is None


def test_tokenizer_routes(base_url, engine):
    text = "Tokens, then text again: café 12x12."
    ids = httpx.post(f"{base_url}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert ids == engine.tok(text, add_special_tokens=False)["input_ids"]
    assert httpx.post(f"{base_url}/detokenize", json={"tokens": ids}).json()["prompt"] == text
    chat = httpx.post(f"{base_url}/tokenize", json={"messages": MESSAGES}).json()
    assert chat["tokens"] == engine.encode(MESSAGES) and chat["count"] == len(chat["tokens"])
    info = httpx.get(f"{base_url}/tokenizer_info").json()
    assert info["eos_token"] == engine.tok.eos_token and info["model_max_length"] == engine.context_length
    r = httpx.post(f"{base_url}/detokenize", json={"tokens": [1, 10 ** 9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "echo": True, "stream": True}, "echo"),
    ({"prompt": [[1, 2], [3, 10 ** 9]]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": ["a"] * 65}, "prompt"),
    ({"prompt": ["a", "b"], "stream": True}, "prompt"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "def f(", "suffix": "return x"}, "suffix"),
    ({"prompt": "hi", "best_of": 3}, "best_of"),
])
def test_completion_request_errors(base_url, body, param):
    r = httpx.post(f"{base_url}/v1/completions", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_top_logprobs_needs_logprobs(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, top_logprobs=2)
    assert err.value.param == "top_logprobs"


def test_eos_row_kept_for_lm_eval():
    """A choice the model ended lists its end-of-sequence row; one a stop string ended does not."""
    from types import SimpleNamespace

    from strop.serve.generation import Outcome
    from strop.serve.logprobs import generated_rows

    req = SimpleNamespace(scores=["a", "b", "eos"], finish_reason="stop")
    assert generated_rows(req, Outcome(tokens=2, finish_reason="stop")) == ["a", "b", "eos"]
    assert generated_rows(req, Outcome(tokens=1, finish_reason="stop", stop_string=True)) == ["a"]
    assert generated_rows(SimpleNamespace(scores=["a", "b"], finish_reason="length"), Outcome(tokens=2)) == ["a", "b"]


def _steered_greedy(engine, ids: list[int], n: int, bias: dict[int, float], presence: float, frequency: float):
    """OpenAI's definition, by hand: each step's scores plus the bias, less count x frequency and (count > 0) x
    presence over the tokens generated so far; the best of them, until the end token."""
    import collections

    import torch

    out: list[int] = []
    for _ in range(n):
        with torch.inference_mode():
            scores = engine.model(input_ids=torch.tensor([ids + out])).logits[0, -1].float().clone()
            for t, b in bias.items():
                scores[t] += b
            for t, c in collections.Counter(out).items():
                scores[t] -= c * frequency + presence
            best = int(scores.argmax())
        if best == engine.tok.eos_token_id:
            break
        out.append(best)
    return out


def test_logit_bias_and_penalties_steer_each_token_as_openai_defines_them(base_url, engine):
    ids = engine.tok("The harbour at dawn", add_special_tokens=False)["input_ids"]
    plain = _steered_greedy(engine, ids, 8, {}, 0.0, 0.0)
    assert len(plain) > len(set(plain)), "the tiny model repeats itself greedily, so penalties must change it"
    cases = [({}, 1.5, 0.5), ({plain[0]: -100.0}, 0.0, 0.0), ({101: 4.0, 202: 4.0}, 0.0, 1.0)]
    for bias, presence, frequency in cases:
        body = {"model": "tiny", "prompt": [ids], "max_tokens": 8, "logit_bias": {str(k): v for k, v in bias.items()},
                "presence_penalty": presence, "frequency_penalty": frequency}
        r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        want = _steered_greedy(engine, ids, 8, bias, presence, frequency)
        assert want != plain and r.json()["choices"][0]["text"] == engine.tok.decode(want), (bias, presence, frequency)
    # +100 is exclusive selection, on the chat route and when sampling too, streamed or not
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 5, "logit_bias": {"42": 100}, **SAMPLED}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.json()["choices"][0]["message"]["content"] == engine.tok.decode([42] * 5)
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(stream=True, **{**body, "logit_bias": {"42": 100}})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == engine.tok.decode([42] * 5)


def test_python_api_steers_as_the_server_does(engine):
    """strop.load(...).complete_ids / chat / generate / stream take the same logit_bias and penalties, with the
    same tokens as the hand-written greedy loop; +100 selects its token when sampling too; bad values are one
    StropError naming the argument."""
    from strop.core.errors import StropError

    ids = engine.tok("The harbour at dawn", add_special_tokens=False)["input_ids"]
    plain = _steered_greedy(engine, ids, 8, {}, 0.0, 0.0)
    for bias, presence, frequency in [({}, 1.5, 0.5), ({plain[0]: -100.0}, 0.0, 0.0), ({101: 4.0, 202: 4.0}, 0.0, 1.0)]:
        want = _steered_greedy(engine, ids, 8, bias, presence, frequency)
        got = engine.complete_ids(ids, max_new_tokens=8, logit_bias={str(k): v for k, v in bias.items()},
                                  presence_penalty=presence, frequency_penalty=frequency)
        assert want != plain and got.text == engine.tok.decode(want), (bias, presence, frequency)
    assert engine.generate("Say something about the sea.", max_new_tokens=5, logit_bias={42: 100}, temperature=1.0,
                           seed=3) == engine.tok.decode([42] * 5)
    pieces = engine.stream(MESSAGES, max_new_tokens=5, logit_bias={42: 100}, temperature=0.7, top_p=0.1, seed=1)
    assert "".join(pieces) == engine.tok.decode([42] * 5)
    for kw, named in [({"logit_bias": {"sea": 1}}, "logit_bias"), ({"logit_bias": {5: 250}}, r"logit_bias\[5\]"),
                      ({"logit_bias": {10**8: 1}}, "outside the vocabulary"), ({"presence_penalty": 3}, "presence_penalty"),
                      ({"frequency_penalty": float("nan")}, "frequency_penalty")]:
        with pytest.raises(StropError, match=named):
            engine.generate("hi", max_new_tokens=2, **kw)


@pytest.mark.parametrize("body, param", [
    ({"logit_bias": {"sea": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 250}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"function_call": {"name": "f"}}, "function_call"),
])
def test_chat_options_it_cannot_honour_are_refused_by_name(base_url, body, param):
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2,
                                                           **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_chat_options_that_leave_the_answer_right_are_accepted(client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6).choices[0].message.content
    for extra in ({"response_format": {"type": "text"}}, {"tools": tools, "tool_choice": "auto"},
                  {"tools": tools, "tool_choice": "none"}, {"user": "u-1", "store": False}):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, **extra)
        assert r.choices[0].message.content == plain, extra


def test_responses_api_answers_like_the_chat_route(client):
    """The official SDK's responses.create: the same answer and token counts as chat with the same turns
    (instructions as the system message), in the Responses shape; cut by max_output_tokens it says so."""
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say something about the sea."}]}]
    as_chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
               {"role": "assistant", "content": "hi"}, {"role": "user", "content": "Say something about the sea."}]
    for extra in ({}, SAMPLED):
        chat = client.chat.completions.create(model="tiny", messages=as_chat, max_tokens=6, **extra)
        r = client.responses.create(model="tiny", instructions="Be brief.", input=turns, max_output_tokens=6,
                                    extra_body={"seed": extra.get("seed")}, **({"temperature": 1.0} if extra else {}))
        assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
        assert r.output_text == chat.choices[0].message.content and r.output[0].role == "assistant"
        assert (r.usage.input_tokens, r.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
        cut = chat.choices[0].finish_reason == "length"
        assert r.status == ("incomplete" if cut else "completed")
        assert (r.incomplete_details.reason if cut else r.incomplete_details) == ("max_output_tokens" if cut else None)
    plain = client.responses.create(model="tiny", input="Say something about the sea.", max_output_tokens=6)
    assert plain.output_text == client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                               max_tokens=6).choices[0].message.content


@pytest.mark.parametrize("body, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"input": ""}, "input"),
    ({"input": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input"),
])
def test_responses_api_refuses_what_it_cannot_honour_by_name(base_url, body, param):
    r = httpx.post(f"{base_url}/v1/responses", json={"model": "tiny", "input": "hi", "max_output_tokens": 2, **body},
                   timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_responses_api_streams_events_the_sdk_assembles(client, engine):
    """Streamed, the same answer as unstreamed: the SDK's stream helper rebuilds the response from the
    events (it checks their order), and the raw events carry increasing sequence numbers. Cut by
    max_output_tokens the stream ends with response.incomplete, as OpenAI's does; an answer the model
    ends (here at once: its end token biased to +100) with response.completed."""
    args = {"model": "tiny", "input": "Say something about the sea.", "max_output_tokens": 8,
            "temperature": 1.0, "extra_body": {"seed": 3}}
    whole = client.responses.create(**args)
    assert whole.status == "incomplete" and whole.output_text
    with client.responses.stream(**args) as stream:
        seen = list(stream)
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    final = seen[-1].response
    assert seen[-1].type == "response.incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == whole.output_text == "".join(deltas)
    assert final.usage.output_tokens == whole.usage.output_tokens == 8
    ended = {**args, "extra_body": {"logit_bias": {str(engine.tok.eos_token_id): 100}}}
    with client.responses.stream(**ended) as stream:
        done = stream.get_final_response()
    assert done.status == "completed" and done.output_text == "" and done.usage.output_tokens == 0
    events = list(client.responses.create(stream=True, **args))
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress", "response.output_item.added",
                                           "response.content_part.added"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
