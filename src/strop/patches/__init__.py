"""Every change strop makes to a third-party library's internals, each one a context manager.

Inventory: ``INVENTORY`` below lists what each patch replaces; ``tests/test_patches.py``
checks that every target still exists in the installed library and that each patch
leaves the library as it found it when the context exits.
"""
