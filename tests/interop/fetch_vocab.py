"""Take llama.cpp's own tokenizer test vocabularies out of the llama-cpp-python source package.

`make test-interop` runs this once. llama.cpp keeps vocabulary-only GGUF files of
several families in ``models/`` for its tokenizer tests; the Qwen 2 one lets a tiny
test model carry Qwen 2's real tokenizer, which the GGUF converter recognises (no
model hub needed: the source package comes from PyPI, like the rest).

    python tests/interop/fetch_vocab.py build/llama-vocab
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # the llama-cpp-python `make test-interop` installs
WANTED = ("ggml-vocab-qwen2.gguf",)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--no-binary", ":all:", f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.parent.as_posix().endswith("vendor/llama.cpp/models") and name.name in WANTED:
                    (out / name.name).write_bytes(tar.extractfile(member).read())
                elif name.as_posix().endswith("vendor/llama.cpp/LICENSE"):
                    (out / "LICENSE-llama.cpp").write_bytes(tar.extractfile(member).read())
    missing = [w for w in WANTED if not (out / w).is_file()]
    if missing:
        sys.exit(f"fetch_vocab: {', '.join(missing)} not in llama-cpp-python {VERSION}'s source package")
    (out / "PROVENANCE").write_text(f"From llama-cpp-python {VERSION} (PyPI source package), "
                                    "vendor/llama.cpp/models/; llama.cpp is MIT-licensed (LICENSE-llama.cpp).\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/llama-vocab"))
