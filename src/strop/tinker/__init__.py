"""A local Tinker-compatible training API: the official `tinker` SDK (TINKER_BASE_URL) trains and samples
LoRA adapters on strop's stack, on one machine (`strop tinker-serve`, docs/tinker.md)."""
