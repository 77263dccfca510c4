"""Importing bitsandbytes without asking the Hugging Face hub for code.

On a CPU with AVX-512 BF16, bitsandbytes' CPU backend calls
``kernels.get_kernel("kernels-community/quantization-bitsandbytes")`` while it is
being imported. That is a DNS lookup and an HTTPS request to huggingface.co, and
peft imports bitsandbytes whenever it is installed, so every strop process that
loads peft (training, evaluation, serving) made that request, even with LoRA on a
laptop that never uses 4-bit weights. On an air-gapped machine it waits for the
resolver to give up; on a connected one it would fetch compiled code strop never
audited, if the hub's trust check ever let it through.

strop already keeps the hub kernels of transformers off (``USE_HUB_KERNELS=0`` in
``strop/__init__.py``). ``install()`` applies the same rule to bitsandbytes: a
finder on ``sys.meta_path`` wraps the package's loader so that, while its modules
run, ``kernels.get_kernel`` refuses. bitsandbytes then uses its own CPU code, as
it does on any machine where the hub cannot be reached; 4-bit training (QLoRA)
works as before. No library is changed outside that window.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import sys

PACKAGE = "bitsandbytes"


class HubKernelRefused(RuntimeError):
    """What ``kernels.get_kernel`` raises inside ``no_hub_kernels()``."""


@contextlib.contextmanager
def no_hub_kernels():
    """For the length of the block, ``kernels.get_kernel`` raises instead of contacting the hub."""
    try:
        import kernels
    except ImportError:  # an older transformers without the kernels package: nothing to refuse
        yield
        return
    found = kernels.get_kernel

    def refuse(repo_id, *args, **kwargs):
        raise HubKernelRefused(f"strop keeps hub kernels off; {repo_id} was not fetched")

    kernels.get_kernel = refuse
    try:
        yield
    finally:
        kernels.get_kernel = found


class _Loader(importlib.abc.Loader):
    """The package's own loader, executing the module inside ``no_hub_kernels()``."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        with no_hub_kernels():
            self._inner.exec_module(module)

    def __getattr__(self, name):  # get_source, get_resource_reader, is_package, ...
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != PACKAGE:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and not isinstance(spec.loader, _Loader):
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); a package already imported stays as it is."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
