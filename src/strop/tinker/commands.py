"""`strop tinker-serve`: the Tinker training API on this machine, for the official `tinker` SDK.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations


def tinker_serve_cmd(args) -> int:
    import os

    from ..http.guard import check_bind
    from .app import serve

    key = args.api_key or os.environ.get("STROP_API_KEY")
    check_bind(args.host, key, args.no_auth)
    return serve(args.workdir, host=args.host, port=args.port, api_key=key, drain_timeout=args.drain_timeout)


def add_tinker_serve(sub) -> None:
    t = sub.add_parser("tinker-serve", help="Tinker-compatible training API (forward_backward, optim_step, sample) "
                                            "for the official tinker SDK")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=8000)
    t.add_argument("--workdir", default="strop-tinker", help="where saved weights and optimizer states live")
    t.add_argument("--api-key", help="require this key (the SDK sends TINKER_API_KEY, which starts with tml-; "
                                     "or set STROP_API_KEY)")
    t.add_argument("--no-auth", action="store_true",
                   help="allow a non-loopback --host without an API key (anyone who can reach it can train on it)")
    t.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    t.set_defaults(func=tinker_serve_cmd)


PARSERS = {"tinker-serve": add_tinker_serve}
