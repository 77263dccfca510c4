"""OpenAI's grader objects, checked and run: the rewards of reinforcement fine-tuning.

The shapes are the SDK's (``openai/types/graders/*.py``): ``string_check``,
``text_similarity``, ``score_model``, ``label_model``, ``python`` and
``multi``. ``validate`` checks one (recursively for multi) and returns it
normalised, or raises ``GraderError`` naming the field; ``run`` grades one
model sample against one dataset item and answers in the shape of the SDK's
``GraderRunResponse``; ``reward_function`` turns a grader into a reward
function for TRL's GRPOTrainer.

Templates (``{{sample.output_text}}``, ``{{sample.output_json.key}}``,
``{{item.key.sub}}``) fill a grader's text fields. A missing item key is the
data's fault and raises ``GraderError``; a sample that is not JSON, or lacks
a key, is the model's doing and scores 0 with ``sample_parse_error`` or
``invalid_variable_error`` set, as any other grading failure does.

docs/graders.md maps each type and metric to OpenAI's and says what is not
supported.
"""
from __future__ import annotations

import ast
import difflib
import functools
import json
import logging
import math
import operator
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..core.errors import StropError
from . import sandbox

log = logging.getLogger(__name__)

OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor",
           "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
SAMPLING_PARAMS = {"max_completions_tokens": int, "reasoning_effort": str, "seed": int,
                   "temperature": (int, float), "top_p": (int, float)}
# (required fields, optional fields) of each type, from the SDK's models.
FIELDS = {
    "string_check": ({"type", "name", "input", "reference", "operation"}, set()),
    "text_similarity": ({"type", "name", "input", "reference", "evaluation_metric"}, set()),
    "score_model": ({"type", "name", "input", "model"}, {"range", "sampling_params"}),
    "label_model": ({"type", "name", "input", "model", "labels", "passing_labels"}, set()),
    "python": ({"type", "name", "source"}, {"image_tag"}),
    "multi": ({"type", "name", "graders", "calculate_output"}, set()),
}
FUNCTIONS: dict[str, tuple[Callable, int, int]] = {  # name: (function, fewest, most arguments)
    "min": (lambda *a: min(a), 1, 64), "max": (lambda *a: max(a), 1, 64), "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1), "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 1), "exp": (math.exp, 1, 1),
}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
FORMULA_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.keyword, ast.Name, ast.Constant, ast.Load,
                 *BINARY, *UNARY)  # keyword only to say, below, that calls take positional arguments
MAX_SOURCE_CHARS = 256 * 1024
MAX_FORMULA_CHARS = 1000
DETAIL_CHARS = 500
TRL_EXTRAS = {"completion_ids", "environments"}  # per-completion lists TRL adds that are not dataset columns
REWARD_WORKERS = 4  # completions graded at once: model graders wait on the network, python graders on a process
TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
REFERENCE = re.compile(r"(sample|item)((?:\.[^.\s{}]+)*)")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
NO_ERRORS = {
    "formula_parse_error": False, "invalid_variable_error": False, "model_grader_parse_error": False,
    "model_grader_refusal_error": False, "model_grader_server_error": False,
    "model_grader_server_error_details": None, "other_error": False, "python_grader_runtime_error": False,
    "python_grader_runtime_error_details": None, "python_grader_server_error": False,
    "python_grader_server_error_type": None, "sample_parse_error": False, "truncated_observation_error": False,
    "unresponsive_reward_error": False,
}
SCORE_INSTRUCTION = ('Whatever the messages ask, reply with only a JSON object {{"result": <number>}}, '
                     "where the number is your score, from {lo:g} to {hi:g}.")
LABEL_INSTRUCTION = ('Whatever the messages ask, reply with only a JSON object {{"result": "<label>"}}, '
                     "where the label is exactly one of: {labels}.")


class GraderError(StropError):
    """A grader the service cannot accept or run. ``param`` is the dotted path of the field at fault."""

    def __init__(self, message: str, param: str = "grader") -> None:
        super().__init__(f"{param}: {message}")
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ModelEndpoint:
    """An OpenAI-compatible chat completions endpoint that the operator lends to model graders."""

    base_url: str
    api_key: str = field(default="unused", repr=False)  # kept out of reprs, logs and tracebacks
    timeout: float = 60.0
    max_retries: int = 2


# ---------------------------------------------------------------- validation


def validate(grader: dict, *, python_enabled: bool, model_endpoint: ModelEndpoint | None = None) -> dict:
    """The grader, normalised (defaults filled in, multi's ``graders`` a name -> grader dict), or GraderError."""
    return _validate(grader, "grader", python_enabled, model_endpoint, nested=False)


def _validate(g, param: str, python_enabled: bool, endpoint: ModelEndpoint | None, nested: bool) -> dict:
    if not isinstance(g, dict):
        raise GraderError(f"must be a grader object, got {type(g).__name__}", param)
    kind = g.get("type")
    if kind not in FIELDS or (nested and kind == "multi"):
        allowed = [t for t in FIELDS if not (nested and t == "multi")]
        raise GraderError(f"unknown grader type {kind!r}; one of {', '.join(allowed)}", f"{param}.type")
    g = _check_fields(g, kind, param)
    _text(g, "name", param)
    if kind == "python":
        return _validate_python(g, param, python_enabled)
    if kind == "multi":
        return _validate_multi(g, param, python_enabled, endpoint)
    if kind in ("score_model", "label_model"):
        return _validate_model(g, param, endpoint)
    if kind == "string_check":
        _choice(g, "operation", OPERATIONS, param)
    else:
        _choice(g, "evaluation_metric", METRICS, param)
        _check_metric_available(g["evaluation_metric"], f"{param}.evaluation_metric")
    _check_template(_text(g, "input", param), f"{param}.input")
    _check_template(_text(g, "reference", param), f"{param}.reference")
    return dict(g)


def _check_fields(g: dict, kind: str, param: str) -> dict:
    """The grader without optional fields set to null (the SDK's models write those); refuses missing and
    unknown fields, so a typo is an error rather than a silent default."""
    required, optional = FIELDS[kind]
    g = {k: v for k, v in g.items() if not (v is None and k in optional)}
    for name in sorted(required - g.keys()):
        raise GraderError(f"missing; a {kind} grader needs {', '.join(sorted(required))}", f"{param}.{name}")
    for name in sorted(g.keys() - required - optional):
        raise GraderError(f"unknown field for a {kind} grader; its fields are {', '.join(sorted(required | optional))}",
                          f"{param}.{name}")
    return g


def _text(g: dict, key: str, param: str) -> str:
    value = g[key]
    if not isinstance(value, str) or (key == "name" and not value.strip()):
        raise GraderError(f"must be a{' non-empty' if key == 'name' else ''} string", f"{param}.{key}")
    return value


def _choice(g: dict, key: str, allowed: tuple[str, ...], param: str) -> None:
    if g[key] not in allowed:
        raise GraderError(f"unknown value {g[key]!r}; one of {', '.join(allowed)}", f"{param}.{key}")


def _check_template(text: str, param: str) -> None:
    """Every ``{{...}}`` must name sample.output_text, sample.output_json[.key...] or item[.key...]."""
    for ref in TEMPLATE.findall(text):
        _parse_reference(ref.strip(), param)
    if "{{" in TEMPLATE.sub("", text) or "}}" in TEMPLATE.sub("", text):
        raise GraderError("has an unclosed or stray '{{' or '}}' in its template", param)


def _parse_reference(ref: str, param: str) -> tuple[str, list[str]]:
    match = REFERENCE.fullmatch(ref)
    if not match:
        raise GraderError(f"template {{{{{ref}}}}} must start with 'sample.' or 'item.'", param)
    keys = match[2].split(".")[1:]
    if match[1] == "sample" and not (keys == ["output_text"] or keys[:1] == ["output_json"]):
        raise GraderError(f"template {{{{{ref}}}}}: a sample has output_text and output_json (with keys) only",
                          param)
    return match[1], keys


def _check_metric_available(metric: str, param: str) -> None:
    if metric == "meteor" and (reason := _meteor_missing()):
        raise GraderError(f"meteor needs nltk with its wordnet data installed offline ({reason}); "
                          "bleu, gleu, fuzzy_match, cosine and rouge_* need nothing more", param)
    if metric == "cosine":
        from ..models.embeddings import model_dir

        try:
            model_dir()
        except StropError as exc:
            raise GraderError(f"cosine needs the offline sentence embedding model: {exc}", param) from None


def _validate_python(g: dict, param: str, python_enabled: bool) -> dict:
    if not python_enabled:
        raise GraderError("python graders are off on this service; the operator enables them with "
                          "--allow-python-graders", f"{param}.type")
    ok, reason = sandbox.available()
    if not ok:
        raise GraderError(f"python graders cannot run on this machine: {reason}", f"{param}.type")
    source = _text(g, "source", param)
    if len(source) > MAX_SOURCE_CHARS:
        raise GraderError(f"{len(source)} characters, over the limit of {MAX_SOURCE_CHARS}", f"{param}.source")
    _check_grade_function(source, f"{param}.source")
    if "image_tag" in g:
        _text(g, "image_tag", param)
    return dict(g)


def _check_grade_function(source: str, param: str) -> None:
    """The source must parse and define ``grade(sample, item)`` at top level (checked, never run, here)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise GraderError(f"line {exc.lineno}: {exc.msg}", param) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise GraderError(f"cannot be parsed ({type(exc).__name__})", param) from None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "grade"]
    if not defs:
        raise GraderError("must define a top-level function grade(sample, item) returning a float", param)
    args = defs[-1].args
    if len(args.posonlyargs) + len(args.args) < 2 and args.vararg is None:
        raise GraderError("grade() must take two arguments, (sample, item)", param)


def _validate_model(g: dict, param: str, endpoint: ModelEndpoint | None) -> dict:
    if endpoint is None:
        raise GraderError(f"{g['type']} graders need a grading model endpoint, and none is configured (the "
                          "operator sets one with `strop service --grader-endpoint URL`, or STROP_GRADER_BASE_URL)",
                          f"{param}.type")
    out = dict(g, model=_text(g, "model", param), input=_check_messages(g["input"], f"{param}.input"))
    if g["type"] == "score_model":
        out["range"] = _check_range(g.get("range", [0.0, 1.0]), f"{param}.range")
        out["sampling_params"] = _check_sampling(g.get("sampling_params") or {}, f"{param}.sampling_params")
    else:
        _check_labels(g, param)
    return out


def _check_messages(messages, param: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise GraderError("must be a non-empty list of messages ({role, content})", param)
    for i, m in enumerate(messages):
        where = f"{param}.{i}"
        if not isinstance(m, dict) or not {"role", "content"} <= m.keys() or m.keys() - {"role", "content", "type"}:
            raise GraderError("must be a message with role, content and optionally type 'message'", where)
        if m["role"] not in ROLES or (m.get("type") or "message") != "message":
            raise GraderError(f"role must be one of {', '.join(ROLES)} and type 'message'", where)
        parts = m["content"] if isinstance(m["content"], list) else [m["content"]]
        for j, part in enumerate(parts):
            _check_template(_part_text(part, f"{where}.content.{j}"), f"{where}.content")
    return [dict(m) for m in messages]


def _part_text(part, param: str) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    raise GraderError(f"content of type {kind!r} is not supported: strop's model graders take text "
                      f"(a string, input_text or output_text)", param)


def _check_range(value, param: str) -> list[float]:
    if (not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value)
            or not value[0] < value[1]):
        raise GraderError("must be two numbers [low, high] with low < high", param)
    return [float(value[0]), float(value[1])]


def _check_sampling(params, param: str) -> dict:
    if not isinstance(params, dict):
        raise GraderError("must be an object", param)
    for key, value in params.items():
        if key not in SAMPLING_PARAMS:
            raise GraderError(f"unknown sampling parameter; one of {', '.join(SAMPLING_PARAMS)}", f"{param}.{key}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, SAMPLING_PARAMS[key])):
            raise GraderError("has the wrong type", f"{param}.{key}")
    return dict(params)


def _check_labels(g: dict, param: str) -> None:
    labels, passing = g["labels"], g["passing_labels"]
    for key, value in (("labels", labels), ("passing_labels", passing)):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise GraderError("must be a non-empty list of non-empty strings", f"{param}.{key}")
    if extra := [p for p in passing if p not in labels]:
        raise GraderError(f"{extra[0]!r} is not one of labels ({', '.join(labels)})", f"{param}.passing_labels")


def _validate_multi(g: dict, param: str, python_enabled: bool, endpoint: ModelEndpoint | None) -> dict:
    graders = g["graders"]
    if isinstance(graders, dict) and isinstance(graders.get("type"), str):
        graders = {graders.get("name"): graders}  # the SDK's type: one grader, known by its own name
    if not isinstance(graders, dict) or not graders:
        raise GraderError("must be an object mapping names to graders", f"{param}.graders")
    out = {}
    for name, sub in graders.items():
        if not isinstance(name, str) or not name.isidentifier() or name in FUNCTIONS:
            raise GraderError(f"{name!r} cannot be used in calculate_output: a name must be an identifier and "
                              f"not one of {', '.join(FUNCTIONS)}", f"{param}.graders")
        out[name] = _validate(sub, f"{param}.graders.{name}", python_enabled, endpoint, nested=True)
    formula = _text(g, "calculate_output", param)
    _parse_formula(formula, set(out), f"{param}.calculate_output")
    return dict(g, graders=out)


def _parse_formula(text: str, names: set[str], param: str) -> ast.Expression:
    """Parse ``calculate_output``, allowing only numbers, grader names, + - * / ^ ** and FUNCTIONS."""
    if len(text) > MAX_FORMULA_CHARS:
        raise GraderError(f"{len(text)} characters, over the limit of {MAX_FORMULA_CHARS}", param)
    try:
        # OpenAI writes powers as ``^``: read as ``**`` before parsing, since Python's ``^`` (XOR) binds
        # more loosely than + and *, and ``a + b ^ 2`` must square b alone.
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise GraderError(f"cannot parse {text!r}; write arithmetic over the grader names", param) from None
    nodes = list(ast.walk(tree))
    for node in nodes:  # first the kinds of node, so any attribute, subscript or lambda anywhere is named
        if not isinstance(node, FORMULA_NODES):
            raise GraderError(f"{ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__!r} is "
                              f"not allowed; use numbers, grader names, + - * / ^ and "
                              f"{', '.join(FUNCTIONS)}", param)
    calls = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    for node in nodes:
        _check_formula_node(node, names, id(node) in calls, param)
    return tree


def _check_formula_node(node: ast.AST, names: set[str], is_callee: bool, param: str) -> None:
    if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, (int, float))):
        raise GraderError(f"{node.value!r} is not a number", param)
    if isinstance(node, ast.Name) and is_callee and node.id not in FUNCTIONS:
        raise GraderError(f"unknown function {node.id!r}; one of {', '.join(FUNCTIONS)}", param)
    if isinstance(node, ast.Name) and not is_callee and node.id not in names:
        raise GraderError(f"unknown name {node.id!r}; the graders are {', '.join(sorted(names))}", param)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise GraderError("a call must be a plain function name with positional arguments", param)
        _, low, high = FUNCTIONS.get(node.func.id, (None, 0, 64))
        if not low <= len(node.args) <= high:
            raise GraderError(f"{node.func.id}() takes {low}{'' if low == high else f' to {high}'} arguments", param)


# ---------------------------------------------------------------- running


@dataclass
class _Result:
    reward: float
    errors: dict = field(default_factory=dict)  # the flags that are set (and their details)
    scores: dict = field(default_factory=dict)
    token_usage: int | None = None
    model: str | None = None
    usage_per_model: dict = field(default_factory=dict)
    sub_rewards: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Env:
    endpoint: ModelEndpoint | None
    limits: sandbox.Limits | None
    hide: tuple[str, ...]


class _SampleError(Exception):
    """A template asked the sample for something it does not have; ``flag`` says what went wrong."""

    def __init__(self, flag: str) -> None:
        super().__init__(flag)
        self.flag = flag


def make_sample(model_sample: str) -> dict:
    """The ``sample`` namespace from a model's output: output_text, plus output_json when it parses as JSON."""
    sample = {"output_text": model_sample}
    try:
        sample["output_json"] = json.loads(model_sample)
    except ValueError:
        pass
    return sample


def run(grader: dict, sample: str | dict, item=None, *, python_enabled: bool,
        model_endpoint: ModelEndpoint | None = None, sandbox_limits: sandbox.Limits | None = None,
        hide: Sequence[str | os.PathLike] = ()) -> dict:
    """Grade one sample (the model's output text, or a dict with output_text) against one item.

    Returns the SDK's GraderRunResponse shape. Grading failures score 0 with a flag in
    ``metadata.errors``; an invalid grader or an item missing a key a template names
    raises GraderError.
    """
    g = validate(grader, python_enabled=python_enabled, model_endpoint=model_endpoint)
    if isinstance(sample, str):
        sample = make_sample(sample)
    if not isinstance(sample, dict) or not isinstance(sample.get("output_text"), str):
        raise GraderError("must be the model's output text", "model_sample")
    env = _Env(model_endpoint, sandbox_limits, tuple(map(str, hide)))
    start = time.perf_counter()
    result = _grade(g, "grader", sample, {} if item is None else item, env)
    return _response(g, result, time.perf_counter() - start)


def _response(g: dict, result: _Result, seconds: float) -> dict:
    return {
        "reward": result.reward,
        "metadata": {"name": g["name"], "type": g["type"], "errors": {**NO_ERRORS, **result.errors},
                     "execution_time": round(seconds, 6), "scores": result.scores,
                     "token_usage": result.token_usage, "sampled_model_name": result.model},
        "sub_rewards": result.sub_rewards,
        "model_grader_token_usage_per_model": result.usage_per_model,
    }


def _grade(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    try:
        return GRADERS[g["type"]](g, param, sample, item, env)
    except _SampleError as exc:
        return _Result(0.0, {exc.flag: True})


def _render(text: str, sample: dict, item, param: str) -> str:
    return TEMPLATE.sub(lambda m: _lookup(m[1].strip(), sample, item, param), text)


def _lookup(ref: str, sample: dict, item, param: str) -> str:
    namespace, keys = _parse_reference(ref, param)
    if namespace == "sample" and keys[0] == "output_json" and "output_json" not in sample:
        raise _SampleError("sample_parse_error")
    value = sample if namespace == "sample" else item
    for depth, key in enumerate(keys):
        found, value = _child(value, key)
        if not found and namespace == "sample":
            raise _SampleError("invalid_variable_error")
        if not found:
            path = ".".join(["item", *keys[:depth + 1]])
            have = ", ".join(list(map(str, value))[:20]) if isinstance(value, dict) else type(value).__name__
            raise GraderError(f"template {{{{{ref}}}}}: the item has no {path} (it has: {have or 'nothing'})", param)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _child(value, key: str) -> tuple[bool, object]:
    """(True, value[key]) when it exists (a numeric key indexes a list), else (False, value) for the message."""
    if isinstance(value, dict) and key in value:
        return True, value[key]
    if isinstance(value, list) and key.isdigit() and int(key) < len(value):
        return True, value[int(key)]
    return False, value


def _string_check(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    text = _render(g["input"], sample, item, f"{param}.input")
    ref = _render(g["reference"], sample, item, f"{param}.reference")
    hit = {"eq": lambda: text == ref, "ne": lambda: text != ref, "like": lambda: ref in text,
           "ilike": lambda: ref.casefold() in text.casefold()}[g["operation"]]()
    return _Result(1.0 if hit else 0.0)


def _text_similarity(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    text = _render(g["input"], sample, item, f"{param}.input")
    ref = _render(g["reference"], sample, item, f"{param}.reference")
    metric = g["evaluation_metric"]
    score = min(max(float(METRIC_FUNCTIONS[metric](text, ref)), 0.0), 1.0)
    return _Result(score, scores={metric: score})


def fuzzy_match(text: str, ref: str) -> float:
    """difflib's SequenceMatcher ratio, 2*matches/total characters (rapidfuzz is not a strop dependency)."""
    return difflib.SequenceMatcher(None, text, ref, autojunk=False).ratio()


def bleu(text: str, ref: str) -> float:
    """sacrebleu's sentence BLEU (13a tokens, exponential smoothing), scaled to [0, 1]."""
    import sacrebleu

    return sacrebleu.sentence_bleu(text, [ref]).score / 100.0


def gleu(text: str, ref: str) -> float:
    """Sentence GLEU (Wu et al. 2016): min(precision, recall) over all 1- to 4-grams of whitespace tokens."""
    hyp, gold = _ngrams(text.split()), _ngrams(ref.split())
    if not hyp or not gold:
        return 0.0
    matches = sum((hyp & gold).values())
    return min(matches / sum(hyp.values()), matches / sum(gold.values()))


def _ngrams(tokens: list[str]) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, 5) for i in range(len(tokens) - n + 1))


def meteor(text: str, ref: str) -> float:
    """nltk's METEOR on whitespace tokens (needs nltk and its wordnet data; validate checks)."""
    from nltk.translate.meteor_score import meteor_score

    return meteor_score([ref.split()], text.split())


def _meteor_missing() -> str | None:
    try:
        import nltk
    except ImportError:
        return "nltk is not installed"
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return "nltk's wordnet corpus is not downloaded"
    return None


def cosine(text: str, ref: str) -> float:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (strop's offline copy); below 0 counts as 0."""
    from ..models.embeddings import embed

    a, b = embed([text, ref])
    return float(a @ b)


def rouge(n: str) -> Callable[[str, str], float]:
    """ROUGE-n (or ROUGE-L for ``n='l'``) F-measure from rouge-score."""
    key = f"rouge{n.upper()}"

    def score(text: str, ref: str) -> float:
        return _rouge_scorer(key).score(ref, text)[key].fmeasure

    return score


@functools.lru_cache(maxsize=8)
def _rouge_scorer(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key])


METRIC_FUNCTIONS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor, "cosine": cosine,
    **{f"rouge_{n}": rouge(n) for n in ("1", "2", "3", "4", "5", "l")},
}


def _python(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    outcome = sandbox.run(g["source"], sample, item, limits=env.limits, hide=env.hide)
    if outcome.kind is None:
        return _Result(outcome.score)
    if outcome.kind in ("sandbox", "unavailable"):  # the service's fault, not the grader's
        log.warning("python grader %s: %s", g["name"], outcome.error)
        return _Result(0.0, {"python_grader_server_error": True, "python_grader_server_error_type": outcome.kind})
    errors = {"python_grader_runtime_error": True, "python_grader_runtime_error_details": outcome.error}
    if outcome.kind == "timeout":
        errors["unresponsive_reward_error"] = True
    return _Result(0.0, errors)


@dataclass
class _Reply:
    text: str | None = None
    errors: dict = field(default_factory=dict)
    usage: dict | None = None
    model: str | None = None

    def result(self, reward: float, errors: dict | None = None, scores: dict | None = None) -> _Result:
        total = self.usage["total_tokens"] if self.usage else None
        per_model = {self.model: dict(self.usage)} if self.usage else {}
        return _Result(reward, {**self.errors, **(errors or {})}, scores or {}, total, self.model, per_model)


def _score_model(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    low, high = g["range"]
    reply = _chat(env.endpoint, g, _messages(g, param, sample, item, SCORE_INSTRUCTION.format(lo=low, hi=high)))
    if reply.text is None:
        return reply.result(0.0)
    value = _parse_score(reply.text)
    if value is None:
        return reply.result(0.0, {"model_grader_parse_error": True})
    return reply.result(min(max(value, low), high), scores={"result": value})


def _label_model(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    instruction = LABEL_INSTRUCTION.format(labels=", ".join(json.dumps(label) for label in g["labels"]))
    reply = _chat(env.endpoint, g, _messages(g, param, sample, item, instruction))
    if reply.text is None:
        return reply.result(0.0)
    label = _parse_label(reply.text, g["labels"])
    if label is None:
        return reply.result(0.0, {"model_grader_parse_error": True})
    return reply.result(1.0 if label in g["passing_labels"] else 0.0, scores={"label": label})


def _messages(g: dict, param: str, sample: dict, item, instruction: str) -> list[dict]:
    """The grader's messages rendered to plain text, with the reply-format instruction in the system message."""
    out = []
    for i, m in enumerate(g["input"]):
        parts = m["content"] if isinstance(m["content"], list) else [m["content"]]
        where = f"{param}.input.{i}.content"
        text = "\n".join(_render(_part_text(p, where), sample, item, where) for p in parts)
        # Many OpenAI-compatible servers (and chat templates) know no "developer" role; it means system.
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": text})
    if out[0]["role"] == "system":  # templates that allow one system message want it first
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instruction}"}
    else:
        out.insert(0, {"role": "system", "content": instruction})
    return out


def _chat(endpoint: ModelEndpoint, g: dict, messages: list[dict]) -> _Reply:
    """One chat completion; a failure comes back as error flags, never as an exception."""
    import openai

    params = {("max_completion_tokens" if k == "max_completions_tokens" else k): v
              for k, v in (g.get("sampling_params") or {}).items() if v is not None}
    try:
        response = _client(endpoint).chat.completions.create(model=g["model"], messages=messages, **params)
    except openai.OpenAIError as exc:
        return _Reply(errors={"model_grader_server_error": True, "model_grader_server_error_details": _one_line(exc)})
    model = response.model or g["model"]
    usage = response.usage
    reply = _Reply(model=model, usage={"prompt_tokens": usage.prompt_tokens, "completion_tokens":
                                       usage.completion_tokens, "total_tokens": usage.total_tokens} if usage else None)
    choice = response.choices[0] if response.choices else None
    if choice is None:
        reply.errors = {"model_grader_server_error": True, "model_grader_server_error_details": "no choices"}
    elif getattr(choice.message, "refusal", None) or choice.finish_reason == "content_filter":
        reply.errors = {"model_grader_refusal_error": True}
    else:
        reply.text = choice.message.content or ""
    return reply


@functools.lru_cache(maxsize=8)
def _client(endpoint: ModelEndpoint):
    import openai

    return openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=endpoint.timeout,
                         max_retries=endpoint.max_retries)


def _parse_score(text: str) -> float | None:
    """``{"result": x}`` as asked; failing that, the first number in the reply."""
    data = _json_object(text)
    value = data.get("result") if isinstance(data, dict) else None
    if not _is_number(value):
        match = NUMBER.search(text)
        value = float(match[0]) if match else None
    return float(value) if value is not None and math.isfinite(value) else None


def _parse_label(text: str, labels: list[str]) -> str | None:
    """``{"result": label}`` as asked, or the bare label; exact first, then ignoring case."""
    data = _json_object(text)
    candidate = data.get("result") if isinstance(data, dict) else text
    if not isinstance(candidate, str):
        return None
    candidate = candidate.strip().strip("\"'`.").strip()
    if candidate in labels:
        return candidate
    return {label.casefold(): label for label in labels}.get(candidate.casefold())


def _json_object(text: str):
    match = re.search(r"\{.*\}", text, re.DOTALL)  # also inside ```json fences or after a preamble
    try:
        return json.loads(match[0]) if match else None
    except ValueError:
        return None


def _multi(g: dict, param: str, sample: dict, item, env: _Env) -> _Result:
    subs = {name: _grade(sub, f"{param}.graders.{name}", sample, item, env) for name, sub in g["graders"].items()}
    values = {name: r.reward for name, r in subs.items()}
    result = _Result(0.0, scores=dict(values), sub_rewards=dict(values))
    for r in subs.values():
        _merge(result, r)
    tree = _parse_formula(g["calculate_output"], set(values), f"{param}.calculate_output")
    try:
        reward = float(_evaluate(tree.body, values))
    except (ArithmeticError, ValueError):  # 1/0, log(0), sqrt(-1), overflow
        reward = math.nan
    if math.isfinite(reward):
        result.reward = reward
    else:
        result.errors["formula_parse_error"] = True
    return result


def _merge(into: _Result, sub: _Result) -> None:
    """Fold a sub-grader's flags, token counts and model into the multi grader's result."""
    for key, value in sub.errors.items():
        if into.errors.get(key) in (None, False):
            into.errors[key] = value
    if sub.token_usage is not None:
        into.token_usage = (into.token_usage or 0) + sub.token_usage
    into.model = into.model or sub.model
    for model, usage in sub.usage_per_model.items():
        counts = into.usage_per_model.setdefault(model, {k: 0 for k in usage})
        for key, value in usage.items():
            counts[key] = counts.get(key, 0) + (value or 0)


def _evaluate(node: ast.AST, values: dict[str, float]) -> float:
    """Evaluate a formula that _parse_formula accepted; every number is a float, so ``**`` cannot grow unbounded."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](_evaluate(node.operand, values))
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    return float(FUNCTIONS[node.func.id][0](*(_evaluate(a, values) for a in node.args)))


GRADERS: dict[str, Callable[..., _Result]] = {
    "string_check": _string_check, "text_similarity": _text_similarity, "score_model": _score_model,
    "label_model": _label_model, "python": _python, "multi": _multi,
}


# ---------------------------------------------------------------- GRPO


ENDPOINT_ENV = ("STROP_GRADER_BASE_URL", "STROP_GRADER_API_KEY")  # where model graders send their requests


def endpoint_from_env() -> ModelEndpoint | None:
    """The grading endpoint the operator configured (``strop service --grader-endpoint`` sets these for
    its training processes; a CLI user sets them by hand), or None."""
    url = os.environ.get(ENDPOINT_ENV[0], "").strip()
    return ModelEndpoint(url, os.environ.get(ENDPOINT_ENV[1]) or "unused") if url else None


def load_grader(value: str, *, python_enabled: bool = True, model_endpoint: ModelEndpoint | None = None) -> dict:
    """The grader of ``--grader``: JSON text, or the path of a .json file holding it; checked."""
    from pathlib import Path

    text = value if value.lstrip().startswith("{") else None
    if text is None:
        path = Path(value)
        if not path.is_file():
            raise StropError(f"option grader: {value} is neither a JSON object nor a .json file")
        text = path.read_text(encoding="utf-8")
    try:
        grader = json.loads(text)
    except ValueError as exc:
        raise StropError(f"option grader: not valid JSON ({exc})") from None
    if not isinstance(grader, dict):
        raise StropError("option grader: must be a JSON object with a 'type'")
    return validate(grader, python_enabled=python_enabled, model_endpoint=model_endpoint or endpoint_from_env())


def reward_function(grader: dict, *, python_enabled: bool, model_endpoint: ModelEndpoint | None = None,
                    sandbox_limits: sandbox.Limits | None = None,
                    hide: Sequence[str | os.PathLike] = ()) -> Callable[..., list[float]]:
    """The grader as a TRL GRPOTrainer reward function: ``fn(prompts, completions, **columns) -> list[float]``.

    Row i's item is ``{name: column[i]}`` over the dataset columns TRL passes; a completion
    may be text or a chat message list (its last assistant message is graded). A grading
    failure scores 0 and is logged; a row missing a key a template names raises GraderError.
    """
    g = validate(grader, python_enabled=python_enabled, model_endpoint=model_endpoint)
    env = _Env(model_endpoint, sandbox_limits, tuple(map(str, hide)))

    def reward(prompts: list, completions: list, **columns) -> list[float]:
        n = len(completions)
        data = {k: v for k, v in columns.items()
                if isinstance(v, (list, tuple)) and len(v) == n and k not in TRL_EXTRAS}
        jobs = [(make_sample(_completion_text(c)), {k: v[i] for k, v in data.items()})
                for i, c in enumerate(completions)]
        with ThreadPoolExecutor(max_workers=REWARD_WORKERS) as pool:
            results = list(pool.map(lambda job: _grade(g, "grader", job[0], job[1], env), jobs))
        _log_failures(g["name"], results)
        return [r.reward for r in results]

    reward.__name__ = reward.__qualname__ = "grader_" + re.sub(r"\W+", "_", g["name"]).strip("_")
    return reward


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    for message in reversed(completion or []):
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content") or ""
            if isinstance(content, list):  # content parts: keep the text ones
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _log_failures(name: str, results: list[_Result]) -> None:
    failed = Counter(k for r in results for k, v in r.errors.items() if v is True)
    if failed:
        details = next((v for r in results for k, v in r.errors.items() if k.endswith(("_details", "_type")) and v),
                       None)
        log.warning("grader %s: %s scored 0%s", name, ", ".join(f"{k} x{n}" for k, n in failed.items()),
                    f" (first: {details})" if details else "")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:DETAIL_CHARS]
