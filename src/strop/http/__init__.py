"""The HTTP layer every strop server shares: the guard (API key, allowed hosts, body and header
limits, browser safety headers), OpenAI-shaped errors, and running uvicorn with a drain on stop.

``serve`` (the OpenAI-compatible inference server) and ``service`` (fine-tuning jobs, the
studio) both build on it, so a client sees one set of rules and one error shape.
"""
