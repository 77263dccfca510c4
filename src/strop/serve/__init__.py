"""Serving stage: the OpenAI-compatible HTTP server over the engine (strop.models.engine), with continuous
batching, several adapters on one base and the vLLM hand-off. Its commands: `strop generate|chat|serve`."""
