"""Server counters and histograms, rendered in Prometheus text format at ``/metrics``."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 800)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str) -> list[str]:
        lines, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.n}")
        return lines


class Metrics:
    """Thread-safe; every HTTP thread records into one instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.decode_tps = Histogram(TPS_BUCKETS)
        self.last_decode_tps = 0.0

    def record_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def record_generation(self, input_tokens: int, output_tokens: int, cached_tokens: int,
                          ttft_s: float, decode_tps: float) -> None:
        with self._lock:
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.cached_tokens += cached_tokens
            if cached_tokens > 0:
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            self.ttft.observe(ttft_s)
            if decode_tps > 0:
                self.decode_tps.observe(decode_tps)
                self.last_decode_tps = decode_tps

    @property
    def requests_total(self) -> int:
        return sum(self.requests.values())

    def render(self, gauges: dict[str, float]) -> str:
        with self._lock:
            lines = ["# TYPE pensieve_requests_total counter"]
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'pensieve_requests_total{{route="{route}",status="{status}"}} {count}')
            for name, value in (
                ("pensieve_input_tokens_total", self.input_tokens),
                ("pensieve_output_tokens_total", self.output_tokens),
                ("pensieve_prefix_cache_read_tokens_total", self.cached_tokens),
                ("pensieve_prefix_cache_hits_total", self.cache_hits),
                ("pensieve_prefix_cache_misses_total", self.cache_misses),
            ):
                lines += [f"# TYPE {name} counter", f"{name} {value}"]
            lines.append("# TYPE pensieve_time_to_first_token_seconds histogram")
            lines += self.ttft.render("pensieve_time_to_first_token_seconds")
            lines.append("# TYPE pensieve_decode_tokens_per_second histogram")
            lines += self.decode_tps.render("pensieve_decode_tokens_per_second")
        for name, value in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
