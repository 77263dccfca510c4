"""The layout rule of docs/architecture.md: every import between strop's parts goes downward.

strop's parts are stacked in ``LAYERS``, lowest first. A module may import its own part and
any part below it, never one above it or beside it, whether the import sits at the top of
the file or inside a function. No module imports another module's underscore name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "strop"

# lowest first; the names are packages or top-level modules of strop
LAYERS = [
    "core",      # config, errors, run directory, paths, suggestions, logging, threads
    "patches",   # context managers that change third-party internals
    "methods",   # the method table, bottleneck adapters, objectives, preservation modes
    "models",    # resolve, load policy, GGUF conversion, chat templates, the engine, embeddings
    "metrics",   # text metrics: BLEU, chrF, ROUGE, exact match
    "report",    # HTML and plots, given numbers
    "data",
    "plan",
    "graders",
    "train",
    "eval",
    "export",
    "http",      # auth, limits and OpenAI-shaped errors for every server
    "serve",
    "active",
    "tinker",    # the Tinker-compatible training API
    "service",
    "compare",
    "demo",
    "cli",
    "__init__",  # the public Python API (strop.load)
    "__main__",
]


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path):
    """(line, imported module, imported name or None) for every import of strop in ``path``."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "strop":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] + ([node.module] if node.module else [])
                target = ".".join(base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "strop":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (SRC / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC / Path(*sub.split(".")) / "__init__.py").is_file()
                yield node.lineno, (sub if is_module else target), (None if is_module else alias.name)


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {part_of(module_name(p)) for p in FILES}
    assert parts <= set(LAYERS), f"add these to LAYERS and docs/architecture.md: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward(path):
    here = part_of(module_name(path))
    wrong = []
    for line, target, name in imports(path):
        there = part_of(target)
        if there == "__init__" and target == "strop" and name is None:
            continue
        if target == "strop" and name is not None:  # `from strop import x` where x is not a module
            there = "__init__"
        if there != here and LAYERS.index(there) > LAYERS.index(here):
            wrong.append(f"{path.relative_to(SRC)}:{line}: {here} imports {target} ({there} is above it)")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_another_modules_private_name(path):
    wrong = [f"{path.relative_to(SRC)}:{line}: imports {target}.{name}"
             for line, target, name in imports(path)
             if name and name.startswith("_") and not name.startswith("__")]
    wrong += [f"{path.relative_to(SRC)}:{line}: imports private module {target}"
              for line, target, name in imports(path) if any(p.startswith("_") and not p.startswith("__")
                                                               for p in target.split("."))]
    assert not wrong, "\n".join(wrong)
