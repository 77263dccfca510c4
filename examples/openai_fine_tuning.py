"""A fine-tuning script written only against OpenAI's documented API.

It names no strop function and no strop URL: the official client reads
OPENAI_BASE_URL and OPENAI_API_KEY, so the same file runs against OpenAI or
against a `strop service` (docs/migrate-from-openai.md). Run it with:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=KEY python examples/openai_fine_tuning.py DATA_DIR

DATA_DIR holds train.jsonl, valid.jsonl (chat rows), pairs.jsonl (OpenAI DPO
rows) and prompts.jsonl (reinforcement rows with a reference_answer field).
Against strop, the operator maps the model names used here to local models
with `strop service --model-map NAME=MODEL`.
"""
from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

from openai import OpenAI

BASE = "gpt-4o-mini-2024-07-18"
REASONING = "o4-mini-2025-04-16"
COLOUR_GRADER = {"type": "string_check", "name": "colour", "input": "{{sample.output_text}}",
                 "reference": "{{item.reference_answer}}", "operation": "ilike"}
BREVITY_GRADER = {"type": "python", "name": "brevity",
                  "source": "def grade(sample, item):\n    return 1.0 if len(sample['output_text'].split()) <= 3 else 0.0\n"}
# one reinforcement job, both kinds of grader: right colour counts three times as much as brevity
GRADER = {"type": "multi", "name": "colour_and_brevity", "graders": {"colour": COLOUR_GRADER, "brevity": BREVITY_GRADER},
          "calculate_output": "0.75 * colour + 0.25 * brevity"}


def wait(client: OpenAI, job_id: str, statuses=("succeeded", "failed", "cancelled")):
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in statuses:
        time.sleep(1)
    return job


def main(data: Path) -> int:
    client = OpenAI()
    upload = {name: client.files.create(file=(data / f"{name}.jsonl").open("rb"), purpose="fine-tune")
              for name in ("train", "valid", "pairs", "prompts")}

    # supervised, with a validation file and metadata
    sft = client.fine_tuning.jobs.create(model=BASE, training_file=upload["train"].id,
                                         validation_file=upload["valid"].id, suffix="support",
                                         metadata={"team": "support"},
                                         method={"type": "supervised",
                                                 "supervised": {"hyperparameters": {"n_epochs": 2}}})
    print("created", sft.id, sft.status, "batch_size:", sft.method.supervised.hyperparameters.batch_size)
    while (job := client.fine_tuning.jobs.retrieve(sft.id)).status not in ("running", "succeeded", "failed"):
        time.sleep(0.5)
    if job.status == "running":
        client.fine_tuning.jobs.pause(sft.id)
        wait(client, sft.id, ("paused",))
        client.fine_tuning.jobs.resume(sft.id)
    sft = wait(client, sft.id)
    print("supervised:", sft.status, sft.fine_tuned_model, "tokens:", sft.trained_tokens)
    for event in client.fine_tuning.jobs.list_events(sft.id, limit=5):
        print("  event:", event.message)
    table = base64.b64decode(client.files.content(sft.result_files[0]).read()).decode()
    print("  results:", table.splitlines()[0], f"({len(table.splitlines()) - 1} steps)")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(sft.id).data
    print("  checkpoints:", [c.step_number for c in checkpoints])

    # preference (DPO) and reinforcement jobs
    dpo = client.fine_tuning.jobs.create(model=BASE, training_file=upload["pairs"].id,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1,
                                                                                              "n_epochs": 1}}})
    checked = client.fine_tuning.alpha.graders.run(grader=COLOUR_GRADER, model_sample="Blue.",
                                                   item={"reference_answer": "blue"})
    print("grader check: reward", checked.reward)
    rft = client.fine_tuning.jobs.create(model=REASONING, training_file=upload["prompts"].id,
                                         method={"type": "reinforcement",
                                                 "reinforcement": {"grader": GRADER,
                                                                   "hyperparameters": {"n_epochs": 1,
                                                                                       "batch_size": 4}}})
    finished = [wait(client, job.id) for job in (dpo, rft)]
    for job in finished:
        print(f"{job.method.type}:", job.status, job.fine_tuned_model)

    # a job cancelled before it starts, and the listings
    extra = client.fine_tuning.jobs.create(model=BASE, training_file=upload["train"].id)
    print("cancelled:", client.fine_tuning.jobs.cancel(extra.id).status)
    print("jobs of team support:", [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "support"})])
    print("all jobs:", len(list(client.fine_tuning.jobs.list(limit=2))), "files:", len(list(client.files.list(limit=2))))

    # chat with the tuned model and with its first checkpoint
    for model in (sft.fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(model=model, max_tokens=12,
                                               messages=[{"role": "user", "content": "What is 3 plus 3?"}])
        print(f"{model}: {reply.choices[0].message.content!r}")
    return 0 if all(j.status == "succeeded" for j in (sft, *finished)) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
