"""Serving stage: the in-process engine (Python API) and the HTTP server."""
