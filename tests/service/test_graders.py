"""OpenAI's grader objects (strop.graders): validation, templates, every type and metric, GRPO rewards.

Expected scores are worked out by hand in the comments (or by another library), not read
back from the implementation. Model graders talk to a small OpenAI-compatible server
running in a thread; python graders run in the real sandbox (tests/security covers escapes).
"""
from __future__ import annotations

import contextlib
import json
import math
import socket

import pytest
from openai.types.fine_tuning.alpha import GraderRunResponse, GraderValidateResponse

from conftest import fake_chat_endpoint
from strop import graders
from strop.core.errors import StropError
from strop.graders import GraderError, ModelEndpoint, reward_function, run, sandbox, validate


def check(input: str, reference: str, operation: str, name: str = "check") -> dict:
    return {"type": "string_check", "name": name, "input": input, "reference": reference, "operation": operation}


def similar(metric: str, input: str = "{{sample.output_text}}", reference: str = "{{item.reference}}") -> dict:
    return {"type": "text_similarity", "name": "sim", "input": input, "reference": reference,
            "evaluation_metric": metric}


def grade(grader: dict, sample: str, item: dict | None = None, **kw) -> dict:
    kw.setdefault("python_enabled", False)
    response = run(grader, sample, item, **kw)
    GraderRunResponse.model_validate(response)  # the SDK's own type accepts every answer
    return response


def raised(grader: dict, **kw) -> GraderError:
    kw.setdefault("python_enabled", False)
    with pytest.raises(GraderError) as info:
        validate(grader, **kw)
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------- string_check


@pytest.mark.parametrize("operation, text, reference, expected", [
    ("eq", "Paris", "Paris", 1.0),
    ("eq", "Paris", "paris", 0.0),
    ("ne", "Paris", "Rome", 1.0),
    ("ne", "Paris", "Paris", 0.0),
    ("like", "The capital is Paris.", "Paris", 1.0),  # like: input contains reference, case-sensitive
    ("like", "The capital is PARIS.", "Paris", 0.0),
    ("ilike", "The capital is PARIS.", "paris", 1.0),
    ("ilike", "The capital is Rome.", "paris", 0.0),
])
def test_string_check_operations(operation, text, reference, expected):
    r = grade(check("{{sample.output_text}}", "{{item.answer}}", operation), text, {"answer": reference})
    assert r["reward"] == expected
    assert r["metadata"]["type"] == "string_check" and not any(v for v in r["metadata"]["errors"].values())


# ---------------------------------------------------------------- templates


def test_templates_reach_nested_item_keys_list_items_and_sample_json():
    item = {"meta": {"city": {"name": "Oslo"}}, "choices": ["a", "b"], "n": 3, "obj": {"k": [1, 2]}}
    assert grade(check("{{ sample.output_text }}", "{{item.meta.city.name}}", "eq"), "Oslo", item)["reward"] == 1.0
    assert grade(check("b", "{{item.choices.1}}", "eq"), "x", item)["reward"] == 1.0
    # Non-string values are written as JSON.
    assert grade(check("3", "{{item.n}}", "eq"), "x", item)["reward"] == 1.0
    assert grade(check('{"k": [1, 2]}', "{{item.obj}}", "eq"), "x", item)["reward"] == 1.0
    sample = json.dumps({"answer": {"value": "Oslo"}, "n": 3})
    assert grade(check("{{sample.output_json.answer.value}}", "{{item.meta.city.name}}", "eq"),
                 sample, item)["reward"] == 1.0
    assert grade(check("{{sample.output_json.n}}", "{{item.n}}", "eq"), sample, item)["reward"] == 1.0


def test_a_missing_item_key_is_an_error_naming_it():
    g = {"type": "multi", "name": "m", "calculate_output": "a",
         "graders": {"a": check("{{sample.output_text}}", "{{item.meta.answer}}", "eq")}}
    with pytest.raises(GraderError) as info:
        run(g, "x", {"meta": {"question": "q"}}, python_enabled=False)
    assert info.value.param == "grader.graders.a.reference"
    assert "item.meta.answer" in info.value.message and "question" in info.value.message
    with pytest.raises(GraderError, match="item.answer"):
        run(check("x", "{{item.answer}}", "eq"), "x", {}, python_enabled=False)


def test_sample_json_problems_score_zero_with_their_flag():
    g = check("{{sample.output_json.answer}}", "4", "eq")
    not_json = grade(g, "four")
    assert not_json["reward"] == 0.0 and not_json["metadata"]["errors"]["sample_parse_error"]
    missing = grade(g, '{"result": 4}')
    assert missing["reward"] == 0.0 and missing["metadata"]["errors"]["invalid_variable_error"]
    assert grade(g, '{"answer": 4}')["reward"] == 1.0


@pytest.mark.parametrize("template, fragment", [
    ("{{output_text}}", "must start with 'sample.' or 'item.'"),
    ("{{sample.text}}", "output_text and output_json"),
    ("{{sample.output_text.x}}", "output_text and output_json"),
    ("{{item.answer", "unclosed"),
    ("answer}}", "stray"),
    ("{{__import__('os')}}", "must start with"),
])
def test_bad_template_references_are_refused_at_validation(template, fragment):
    err = raised(check(template, "x", "eq"))
    assert err.param == "grader.input" and fragment in err.message


# ---------------------------------------------------------------- text_similarity

HYP = "the quick brown fox jumps over the cat"
REF = "the quick brown fox jumps over the dog"


@pytest.mark.parametrize("metric, expected", [
    # 8 tokens each, 7 shared in order. n-gram matches: 7/8, 6/7, 5/6, 4/5.
    ("bleu", (7 / 8 * 6 / 7 * 5 / 6 * 4 / 5) ** 0.25),  # geometric mean, no brevity penalty
    ("gleu", 22 / 26),  # 1-4-grams: 8+7+6+5 = 26 on each side, 7+6+5+4 = 22 shared
    ("rouge_1", 7 / 8), ("rouge_2", 6 / 7), ("rouge_3", 5 / 6), ("rouge_4", 4 / 5),
    ("rouge_5", 3 / 4),
    ("rouge_l", 7 / 8),  # longest common subsequence: 7 tokens
    ("fuzzy_match", 2 * 35 / 76),  # 38 characters each, all but "cat"/"dog" match
])
def test_text_similarity_metrics(metric, expected):
    r = grade(similar(metric), HYP, {"reference": REF})
    assert r["reward"] == pytest.approx(expected, abs=1e-6)
    assert r["metadata"]["scores"] == {metric: r["reward"]}


def test_similarity_of_identical_and_disjoint_texts():
    for metric in ("bleu", "gleu", "rouge_1", "rouge_l", "fuzzy_match"):
        same = grade(similar(metric), "abc def ghi jkl", {"reference": "abc def ghi jkl"})
        assert same["reward"] == pytest.approx(1.0)
        assert grade(similar(metric), "vwxyz", {"reference": "abc def ghi jkl"})["reward"] == 0.0


def test_gleu_agrees_with_nltk():
    gleu_score = pytest.importorskip("nltk.translate.gleu_score")
    for hyp, ref in [(HYP, REF), ("a cat sat on the mat", "the cat sat on a mat today"), ("x", "x y")]:
        expected = gleu_score.sentence_gleu([ref.split()], hyp.split())
        assert graders.gleu(hyp, ref) == pytest.approx(expected)


def test_meteor_without_wordnet_is_refused_clearly():
    if graders._meteor_missing() is None:
        r = grade(similar("meteor"), HYP, {"reference": REF})
        assert 0.5 < r["reward"] <= 1.0
        return
    err = raised(similar("meteor"))
    assert err.param == "grader.evaluation_metric" and "wordnet" in err.message and "bleu" in err.message


@pytest.mark.slow  # loads the embedding model: about 4 s
def test_cosine_uses_sentence_embeddings():
    pytest.importorskip("sentence_transformers")
    same = grade(similar("cosine"), "A cat sleeps on the sofa.", {"reference": "A cat sleeps on the sofa."})
    near = grade(similar("cosine"), "A cat sleeps on the sofa.", {"reference": "A kitten naps on the couch."})
    far = grade(similar("cosine"), "A cat sleeps on the sofa.", {"reference": "Quarterly tax filing deadlines."})
    assert same["reward"] == pytest.approx(1.0, abs=1e-4)
    assert far["reward"] < near["reward"] < 1.0 and far["reward"] >= 0.0


# ---------------------------------------------------------------- multi


def two_checks(formula: str) -> dict:
    return {"type": "multi", "name": "combo", "calculate_output": formula, "graders": {
        "exact": check("{{sample.output_text}}", "{{item.answer}}", "eq", "exact"),
        "close": similar("rouge_1", reference="{{item.answer}}") | {"name": "close"}}}


@pytest.mark.parametrize("formula, expected", [
    # exact = 0 ("4 apples" != "4"), close = rouge_1 F of "4 apples" vs "4" = 2*(1/2*1)/(1/2+1) = 2/3
    ("0.5 * exact + 0.5 * close", 1 / 3),
    ("max(exact, close)", 2 / 3),
    ("min(exact, close, 1)", 0.0),
    ("close ^ 2 + 1", 4 / 9 + 1),  # ^ is a power and binds tighter than +
    ("-close ** 2", -4 / 9),
    ("sqrt(close) * exp(0) + log(1) - abs(-1) + floor(1.5) + ceil(0.2)", math.sqrt(2 / 3) + 1),
    ("(exact + close) / 2", 1 / 3),
])
def test_multi_combines_sub_graders(formula, expected):
    r = grade(two_checks(formula), "4 apples", {"answer": "4"})
    assert r["reward"] == pytest.approx(expected)
    assert r["sub_rewards"] == pytest.approx({"exact": 0.0, "close": 2 / 3})
    assert r["metadata"]["type"] == "multi"


@pytest.mark.parametrize("formula, fragment", [
    ("__import__('os')", "unknown function '__import__'"),
    ("exact.__class__", "is not allowed"),
    ("exact.real", "is not allowed"),
    ("(lambda: 1)()", "is not allowed"),
    ("[exact][0]", "is not allowed"),
    ("exact if close else 1", "is not allowed"),
    ("exact < close", "is not allowed"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("bogus + 1", "unknown name 'bogus'"),
    ("'a' * 3", "is not a number"),
    ("max(x=exact)", "positional"),
    ("sqrt(exact, close)", "takes 1 arguments"),
    ("exact +", "cannot parse"),
    ("(" * 300 + "exact" + ")" * 300, "cannot parse"),
])
def test_multi_formula_refuses_anything_but_arithmetic(formula, fragment):
    err = raised(two_checks(formula))
    assert err.param == "grader.calculate_output" and fragment in err.message


def test_multi_formula_failure_at_run_time_scores_zero_with_a_flag():
    for formula in ("exact / exact", "log(exact)", "10 ^ 10 ^ 10"):
        r = grade(two_checks(formula), "x", {"answer": "y"})
        assert r["reward"] == 0.0 and r["metadata"]["errors"]["formula_parse_error"]


def test_multi_accepts_the_sdk_single_grader_form_and_refuses_nesting():
    single = {"type": "multi", "name": "m", "calculate_output": "exact * 2",
              "graders": check("{{sample.output_text}}", "ok", "eq", "exact")}
    assert grade(single, "ok")["reward"] == 2.0
    nested = {"type": "multi", "name": "outer", "calculate_output": "inner", "graders": {"inner": single}}
    assert raised(nested).param == "grader.graders.inner.type"
    bad = two_checks("exact")
    bad["graders"]["exact"]["operation"] = "contains"
    err = raised(bad)
    assert err.param == "grader.graders.exact.operation" and "eq, ne, like, ilike" in err.message
    assert raised(two_checks("exact") | {"graders": {"max": check("a", "b", "eq")}}).param == "grader.graders"


# ---------------------------------------------------------------- validate


@pytest.mark.parametrize("grader, param, fragment", [
    ({"type": "regex", "name": "r"}, "grader.type", "string_check, text_similarity"),
    ({"name": "r"}, "grader.type", "unknown grader type None"),
    ([], "grader", "must be a grader object"),
    ({"type": "string_check", "name": "s", "input": "a", "operation": "eq"}, "grader.reference", "missing"),
    (check("a", "b", "eq") | {"refrence": "b"}, "grader.refrence", "its fields are"),
    (check("a", "b", "equals"), "grader.operation", "one of eq, ne, like, ilike"),
    (check("a", "b", "eq") | {"name": ""}, "grader.name", "non-empty string"),
    (check("a", 3, "eq"), "grader.reference", "must be a string"),
    (similar("chrf"), "grader.evaluation_metric", "rouge_l"),
])
def test_validate_names_the_param(grader, param, fragment):
    err = raised(grader)
    assert err.param == param and fragment in err.message, (err.param, err.message)
    assert isinstance(err, StropError) and str(err).startswith(param)


def test_validate_returns_the_normalised_grader():
    g = check("{{sample.output_text}}", "x", "like")
    assert validate(g, python_enabled=False) == g
    GraderValidateResponse.model_validate({"grader": validate(g, python_enabled=False)})
    scored = validate(score_grader(), python_enabled=False, model_endpoint=ModelEndpoint("http://127.0.0.1:9/v1"))
    assert scored["range"] == [0.0, 1.0] and scored["sampling_params"] == {}


def test_python_graders_are_refused_when_off_or_without_grade():
    source = "def grade(sample, item):\n    return 1.0\n"
    off = raised({"type": "python", "name": "p", "source": source})
    assert off.param == "grader.type"
    assert off.message == ("python graders are off on this service; the operator enables them with "
                           "--allow-python-graders")
    ok, reason = sandbox.available()
    if not ok:
        assert reason in raised({"type": "python", "name": "p", "source": source}, python_enabled=True).message
        return
    for bad, fragment in [("def score(sample, item):\n    return 1\n", "grade(sample, item)"),
                          ("def grade(sample):\n    return 1\n", "two arguments"),
                          ("def grade(sample, item)\n    return 1\n", "line 1"),
                          ("class X:\n    def grade(self, s, i): ...\n", "top-level")]:
        err = raised({"type": "python", "name": "p", "source": bad}, python_enabled=True)
        assert err.param == "grader.source" and fragment in err.message, err.message


def test_model_graders_need_an_endpoint():
    err = raised(score_grader())
    assert err.param == "grader.type" and "endpoint" in err.message
    endpoint = ModelEndpoint("http://127.0.0.1:9/v1")
    for change, param in [({"range": [1, 0]}, "grader.range"),
                          ({"sampling_params": {"temprature": 0}}, "grader.sampling_params.temprature"),
                          ({"input": [{"role": "judge", "content": "x"}]}, "grader.input.0"),
                          ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
                           "grader.input.0.content.0"),
                          ({"input": [{"role": "user", "content": "{{sample.output}}"}]}, "grader.input.0.content")]:
        assert raised(score_grader() | change, model_endpoint=endpoint).param == param
    labels = label_grader() | {"passing_labels": ["great"]}
    err = raised(labels, model_endpoint=endpoint)
    assert err.param == "grader.passing_labels" and "'great'" in err.message


# ---------------------------------------------------------------- model graders


def score_grader(**extra) -> dict:
    return {"type": "score_model", "name": "judge", "model": "grader-model", **extra, "input": [
        {"role": "developer", "content": "Grade the answer to {{item.question}}."},
        {"role": "user", "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}}"}]}]}


def label_grader() -> dict:
    return {"type": "label_model", "name": "tone", "model": "grader-model", "labels": ["polite", "rude", "neutral"],
            "passing_labels": ["polite", "neutral"],
            "input": [{"role": "user", "content": "Classify the tone: {{sample.output_text}}"}]}


@contextlib.contextmanager
def fake_grader_server(replies: list):
    """conftest's OpenAI-compatible endpoint answering ``replies`` in turn (str content or a dict message);
    yields the endpoint and the request bodies."""
    bodies = []

    def reply(body):
        bodies.append(body)
        return replies[min(len(bodies), len(replies)) - 1]

    usage = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
    with fake_chat_endpoint(reply, usage=usage, model_suffix="-v1") as url:
        yield ModelEndpoint(url, "sk-grader", 10.0, 0), bodies


def test_score_model_renders_messages_parses_json_and_records_usage():
    with fake_grader_server(['{"result": 0.8}']) as (endpoint, seen):
        g = score_grader(sampling_params={"temperature": 0, "max_completions_tokens": 20, "seed": 1})
        r = grade(g, "Paris", {"question": "the capital of France"}, model_endpoint=endpoint)
    assert r["reward"] == pytest.approx(0.8)
    meta = r["metadata"]
    assert meta["token_usage"] == 35 and meta["sampled_model_name"] == "grader-model-v1"
    assert r["model_grader_token_usage_per_model"] == {
        "grader-model-v1": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}}
    body = seen[0]
    assert body["model"] == "grader-model" and body["temperature"] == 0 and body["seed"] == 1
    assert body["max_completion_tokens"] == 20
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith("Grade the answer to the capital of France.")
    assert '{"result": <number>}' in system["content"] and "from 0 to 1" in system["content"]
    assert user == {"role": "user", "content": "Answer: Paris"}


@pytest.mark.parametrize("reply, expected", [
    ("Score: 7 out of 10", 7.0),          # no JSON: the first number
    ('```json\n{"result": 12}\n```', 10.0),  # clamped to the range's top
    ('{"result": -3}', 0.0),              # and to its bottom
])
def test_score_model_fallbacks_and_range(reply, expected):
    with fake_grader_server([reply]) as (endpoint, seen):
        r = grade(score_grader(range=[0, 10]), "x", {"question": "q"}, model_endpoint=endpoint)
    assert r["reward"] == expected and not r["metadata"]["errors"]["model_grader_parse_error"]
    assert "from 0 to 10" in seen[0]["messages"][0]["content"]


def test_model_grader_failures_are_flags_not_exceptions():
    with fake_grader_server(["I cannot grade this."]) as (endpoint, _):
        r = grade(score_grader(), "x", {"question": "q"}, model_endpoint=endpoint)
    assert r["reward"] == 0.0 and r["metadata"]["errors"]["model_grader_parse_error"]
    assert r["metadata"]["token_usage"] == 35  # the call still cost tokens
    with fake_grader_server([{"role": "assistant", "content": None, "refusal": "no"}]) as (endpoint, _):
        r = grade(score_grader(), "x", {"question": "q"}, model_endpoint=endpoint)
    assert r["reward"] == 0.0 and r["metadata"]["errors"]["model_grader_refusal_error"]


def test_unreachable_endpoint_scores_zero_with_the_server_flag():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = ModelEndpoint(f"http://127.0.0.1:{port}/v1", "sk-x", timeout=2.0, max_retries=0)
    r = grade(score_grader(), "x", {"question": "q"}, model_endpoint=endpoint)
    errors = r["metadata"]["errors"]
    assert r["reward"] == 0.0 and errors["model_grader_server_error"]
    assert "Connection" in errors["model_grader_server_error_details"]
    assert "sk-x" not in repr(endpoint)


@pytest.mark.parametrize("reply, reward, label", [
    ('{"result": "polite"}', 1.0, "polite"),
    ("Neutral.", 1.0, "neutral"),  # bare label, any case
    ('{"result": "rude"}', 0.0, "rude"),
])
def test_label_model(reply, reward, label):
    with fake_grader_server([reply]) as (endpoint, seen):
        r = grade(label_grader(), "Thanks a lot!", {}, model_endpoint=endpoint)
    assert r["reward"] == reward and r["metadata"]["scores"] == {"label": label}
    system = seen[0]["messages"][0]
    assert system["role"] == "system" and '"polite", "rude", "neutral"' in system["content"]
    assert seen[0]["messages"][1] == {"role": "user", "content": "Classify the tone: Thanks a lot!"}


def test_label_model_answer_outside_the_labels_is_a_parse_error():
    with fake_grader_server(['{"result": "sarcastic"}']) as (endpoint, _):
        r = grade(label_grader(), "x", {}, model_endpoint=endpoint)
    assert r["reward"] == 0.0 and r["metadata"]["errors"]["model_grader_parse_error"]


def test_multi_over_model_graders_sums_token_usage():
    g = {"type": "multi", "name": "m", "calculate_output": "0.5 * judge + 0.5 * tone",
         "graders": {"judge": score_grader(), "tone": label_grader()}}
    with fake_grader_server(['{"result": 0.6}', '{"result": "polite"}']) as (endpoint, _):
        r = grade(g, "x", {"question": "q"}, model_endpoint=endpoint)
    assert r["reward"] == pytest.approx(0.8)
    assert r["metadata"]["token_usage"] == 70
    assert r["model_grader_token_usage_per_model"]["grader-model-v1"]["total_tokens"] == 70


# ---------------------------------------------------------------- python (the sandbox itself: tests/security)


def test_python_grader_runs_in_the_sandbox():
    ok, reason = sandbox.available()
    if not ok:
        pytest.skip(reason)
    source = ("def grade(sample, item):\n"
              "    return 1.0 if sample['output_json']['total'] == item['a'] + item['b'] else 0.0\n")
    g = {"type": "python", "name": "sum", "source": source}
    assert grade(g, '{"total": 5}', {"a": 2, "b": 3}, python_enabled=True)["reward"] == 1.0
    assert grade(g, '{"total": 6}', {"a": 2, "b": 3}, python_enabled=True)["reward"] == 0.0
    r = grade(g, "not json", {"a": 2, "b": 3}, python_enabled=True)
    errors = r["metadata"]["errors"]
    assert r["reward"] == 0.0 and errors["python_grader_runtime_error"]
    assert errors["python_grader_runtime_error_details"].startswith("KeyError: 'output_json' (grader.py line 2)")


# ---------------------------------------------------------------- GRPO reward function


def test_reward_function_on_a_grpo_batch():
    g = {"type": "multi", "name": "answer + format", "calculate_output": "0.8 * right + 0.2 * short", "graders": {
        "right": check("{{sample.output_text}}", "{{item.answer}}", "ilike", "right"),
        "short": similar("fuzzy_match", reference="{{item.answer}}") | {"name": "short"}}}
    fn = reward_function(g, python_enabled=False)
    assert fn.__name__ == "grader_answer_format"
    completions = ["It is Paris.", [{"role": "assistant", "content": "paris"}], "Rome",
                   [{"role": "user", "content": "Paris"}, {"role": "assistant", "content": "London"}]]
    rewards = fn(prompts=["q"] * 4, completions=completions, answer=["Paris"] * 4,
                 completion_ids=[[1]] * 4, trainer_state=object(), log_metric=lambda *a: None)
    # fuzzy: "It is Paris." vs "Paris" = 2*5/17; "paris"/"Paris" = 2*4/10; "Rome"/"Paris" = 0
    # ("London"/"Paris": no common character).
    assert rewards == pytest.approx([0.8 + 0.2 * 10 / 17, 0.8 + 0.2 * 0.8, 0.0, 0.0])


def test_reward_function_needs_the_columns_its_templates_name():
    fn = reward_function(check("{{sample.output_text}}", "{{item.answer}}", "eq"), python_enabled=False)
    with pytest.raises(GraderError, match="item.answer"):
        fn(prompts=["q"], completions=["a"], reference=["a"])


# ---------------------------------------------------------------- through the official SDK


def test_sdk_models_dumped_with_nulls_validate():
    from openai.types.graders import PythonGrader, ScoreModelGrader

    scored = ScoreModelGrader(type="score_model", name="j", model="m",
                              input=[{"role": "user", "content": "{{sample.output_text}}"}]).model_dump()
    assert scored["range"] is None and scored["input"][0]["type"] is None  # what the SDK writes
    out = validate(scored, python_enabled=False, model_endpoint=ModelEndpoint("http://127.0.0.1:9/v1"))
    assert out["range"] == [0.0, 1.0]
    if sandbox.available()[0]:
        py = PythonGrader(type="python", name="p", source="def grade(s, i):\n    return 1\n").model_dump()
        assert "image_tag" not in validate(py, python_enabled=True)


def test_the_sdk_graders_resource_round_trip():
    """client.fine_tuning.alpha.graders.run/validate against a two-route app wired the obvious way."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient
    from openai import BadRequestError, OpenAI

    app = FastAPI()

    @app.exception_handler(GraderError)
    async def refused(_: Request, exc: GraderError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message, "param": exc.param, "type": "invalid_request_error",
                                       "code": None}}, status_code=400)

    @app.post("/v1/fine_tuning/alpha/graders/validate")
    async def validate_route(body: dict) -> dict:
        return {"grader": validate(body["grader"], python_enabled=False)}

    @app.post("/v1/fine_tuning/alpha/graders/run")
    async def run_route(body: dict) -> dict:
        return run(body["grader"], body["model_sample"], body.get("item"), python_enabled=False)

    client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=TestClient(app), max_retries=0)
    g = check("{{sample.output_json.city}}", "{{item.city}}", "ilike")
    answer = client.fine_tuning.alpha.graders.run(grader=g, model_sample='{"city": "OSLO"}', item={"city": "oslo"})
    assert answer.reward == 1.0 and answer.metadata.errors.sample_parse_error is False
    assert client.fine_tuning.alpha.graders.validate(grader=g).grader.operation == "ilike"
    with pytest.raises(BadRequestError) as info:
        client.fine_tuning.alpha.graders.validate(grader=check("a", "b", "regex"))
    assert info.value.param == "grader.operation"
