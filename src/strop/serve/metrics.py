"""Counters for GET /metrics, in the Prometheus text exposition format."""
from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (route, status) -> n
        self.sums: Counter = Counter()  # name -> total seconds / tokens

    def request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests[(route, status)] += 1

    def add(self, name: str, value: float) -> None:
        with self.lock:
            self.sums[name] += value

    def render(self, batcher) -> str:
        lines = ["# TYPE strop_requests_total counter"]
        with self.lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'strop_requests_total{{route="{route}",status="{status}"}} {n}')
            for name, value in sorted(self.sums.items()):
                lines += [f"# TYPE strop_{name} counter", f"strop_{name} {value:g}"]
        s = batcher.stats
        lines += ["# TYPE strop_generated_tokens_total counter", f"strop_generated_tokens_total {s['tokens']}",
                  "# TYPE strop_decode_steps_total counter", f"strop_decode_steps_total {s['steps']}",
                  "# TYPE strop_batched_rows_total counter", f"strop_batched_rows_total {s['batched_rows']}",
                  "# TYPE strop_running gauge", f"strop_running {len(batcher.rows)}",
                  "# TYPE strop_waiting gauge", f"strop_waiting {batcher.waiting.qsize()}"]
        return "\n".join(lines) + "\n"
