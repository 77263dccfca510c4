"""bitsandbytes: imported only when 4-bit weights are wanted, and never asking the hub for code.

peft imports bitsandbytes whenever it is installed (``peft/helpers.py``), so every
process that loads peft (training, evaluation, serving, chat) paid for it, even
with LoRA on a machine that never uses 4-bit weights. Two costs, measured on the
project's 2-core CPU:

* time: ``import strop, peft, trl, transformers.trainer`` took 7.2-7.3 s, 5.9-6.3 s
  without bitsandbytes (the package pulls in part of ``torch._inductor``);
* the network: on a CPU with AVX-512 BF16, bitsandbytes' CPU backend calls
  ``kernels.get_kernel("kernels-community/quantization-bitsandbytes")`` while it
  is imported: a DNS lookup and an HTTPS request to huggingface.co. On an
  air-gapped machine that waits for the resolver to give up; on a connected one
  it would fetch compiled code strop never audited, if the hub's trust check
  ever let it through.

Two parts:

* ``install()`` (run by ``import strop``): a finder on ``sys.meta_path`` wraps
  bitsandbytes' loader so that, while its modules run, ``kernels.get_kernel``
  refuses. bitsandbytes then uses its own CPU code, as it does wherever the hub
  cannot be reached, and 4-bit training works as before. This is the same rule
  as ``USE_HUB_KERNELS=0`` for transformers (``strop/__init__.py``).
* ``defer()`` (run by the ``strop`` command, not by ``import strop``, so a user's
  own program is left alone): until something asks for 4-bit weights, the
  process treats bitsandbytes as not installed (``sys.modules[name] = None``,
  which ``importlib.util.find_spec`` reads as absent). ``wanted()`` undoes that
  before strop loads a model in 4 bits or one saved quantized
  (``models._from_pretrained``): it clears the availability answers peft and
  transformers cached and gives ``peft.helpers`` the module it could not import.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import sys

PACKAGE = "bitsandbytes"
# functions that cache whether bitsandbytes is installed (functools.lru_cache), by module
_CACHED_ANSWERS = {"peft.import_utils": ("is_bnb_available", "is_bnb_4bit_available"),
                   "transformers.utils.import_utils": ("is_bitsandbytes_available",)}


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


def defer() -> None:
    """Treat bitsandbytes as absent until ``wanted()``; nothing changes if it is already imported."""
    sys.modules.setdefault(PACKAGE, None)


def deferred() -> bool:
    return PACKAGE in sys.modules and sys.modules[PACKAGE] is None


def wanted() -> None:
    """Make bitsandbytes importable again (after ``defer()``), as if the process had never hidden it."""
    if not deferred():
        return
    del sys.modules[PACKAGE]
    for module, names in _CACHED_ANSWERS.items():
        for name in names:
            fn = getattr(sys.modules.get(module), name, None)
            if hasattr(fn, "cache_clear"):
                fn.cache_clear()
    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", None) is None:
        try:
            import bitsandbytes
        except ImportError:  # not installed after all: the caller's own check says so
            return
        helpers.bnb = bitsandbytes
