"""`strop service|studio`: fine-tuning as a service (OpenAI files and jobs API) and the web studio.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations


def service_cmd(args) -> int:
    import os

    from ..http.guard import check_bind
    from .app import serve
    from .policy import ClientPolicy

    key = args.api_key or os.environ.get("STROP_API_KEY")
    check_bind(args.host, key, args.no_auth)
    policy = ClientPolicy.from_options(args.allow_client_option, args.model_root, args.model_map,
                                       args.allow_python_graders, args.grader_endpoint)
    from .launchers import make
    from .webhooks import parse_endpoints

    hooks = parse_endpoints(args.webhook, args.webhook_secret or os.environ.get("STROP_WEBHOOK_SECRET"))
    launcher = make(args.launcher, args.slurm_option, args.scheduler_poll_s)
    return serve(args.workdir, host=args.host, port=args.port, api_key=key, concurrency=args.concurrency,
                 max_upload_mb=args.max_upload_mb, studio=args.command == "studio", policy=policy, webhooks=hooks,
                 launcher=launcher)


HELP = {"service": "fine-tuning as a service: OpenAI files + fine_tuning.jobs API, serving and studio",
        "studio": "the web studio (runs, compare, data, playground, new job) on the same service"}


def add_service(sub, name: str = "service") -> None:
    sv = sub.add_parser(name, help=HELP[name])
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workdir", default="strop-service", help="where the job store, uploads and runs live")
    sv.add_argument("--api-key", help="require this bearer key for the API and the studio (or set STROP_API_KEY)")
    sv.add_argument("--concurrency", type=int, default=1, help="jobs trained at the same time")
    sv.add_argument("--max-upload-mb", type=float, default=512, help="largest accepted upload")
    sv.add_argument("--no-auth", action="store_true",
                    help="allow a non-loopback --host without an API key (anyone who can reach it can use it)")
    sv.add_argument("--model-root", metavar="DIR",
                    help="local model directories under DIR may be named by API clients (default: aliases only)")
    sv.add_argument("--allow-client-option", action="append", default=[], metavar="NAME",
                    help="let API clients set this option, which can run code or reach host paths "
                         "(trust_remote_code, model_revision, allow_pickle, reward_funcs, reward_model, report_to); "
                         "repeatable")
    sv.add_argument("--model-map", action="append", default=[], metavar="NAME=MODEL",
                    help="train and serve MODEL (an alias or model directory) when a client asks for NAME, "
                         "e.g. gpt-4o-mini-2024-07-18=smollm2-135m-instruct; repeatable (docs/migrate-from-openai.md)")
    sv.add_argument("--allow-python-graders", action="store_true",
                    help="accept reinforcement jobs whose grader is client Python, run in a sandbox with no "
                         "network and no view of the service's files (docs/graders.md)")
    sv.add_argument("--grader-endpoint", metavar="URL",
                    help="OpenAI-compatible base URL that score_model/label_model graders call "
                         "(key from STROP_GRADER_API_KEY)")
    sv.add_argument("--launcher", default="local", metavar="local|slurm",
                    help="where jobs train: child processes here (local), or batch jobs through Slurm's "
                         "sbatch/squeue/scancel, the workdir on a filesystem the nodes share (slurm)")
    sv.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                    help="an sbatch option for every job, e.g. --slurm-option=--partition=gpu "
                         "--slurm-option=--gres=gpu:1; repeatable")
    sv.add_argument("--scheduler-poll-s", type=float, default=10.0, metavar="S",
                    help="ask the scheduler about each running job at most every S seconds (default 10)")
    sv.add_argument("--webhook", action="append", default=[], metavar="URL",
                    help="POST a signed OpenAI-style event here when a job succeeds, fails or is cancelled; "
                         "repeatable (docs/webhooks.md)")
    sv.add_argument("--webhook-secret", metavar="WHSEC",
                    help="the whsec_... secret events are signed with (or set STROP_WEBHOOK_SECRET)")
    sv.set_defaults(func=service_cmd)


def add_studio(sub) -> None:
    add_service(sub, "studio")


PARSERS = {"service": add_service, "studio": add_studio}
