"""Reading a service's /metrics as Prometheus would (prometheus-client's text
parser), and the metric names a PromQL expression uses (for checking that
alerts and dashboards ask for series the services export)."""

from __future__ import annotations

import argparse
import re
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable

from prometheus_client.parser import text_string_to_metric_families

from medledger.runtime.metrics import BENCHMARK_WITHOUT_GRPC_METRICS

# Series Prometheus makes itself for every target, not exported by a service.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Grafana's template variables, replaced by something PromQL parses.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def exposition(url: str, timeout: float = 5.0) -> str:
    """The raw text of one scrape."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return str(reply.read().decode())


def parse(text: str) -> list[Sample]:
    """Every sample of an exposition, as prometheus-client's parser reads it."""
    return [Sample(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def scrape(url: str, timeout: float = 5.0) -> list[Sample]:
    return parse(exposition(url, timeout))


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples with this name whose labels include ``labels``
    (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def present(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and labels.items() <= s.labels.items()]


def promql_names(expression: str) -> set[str]:
    """The metric names an expression selects (PromQL parsed by promql-parser)."""
    import promql_parser

    for variable, replacement in _GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, replacement)
    expression = re.sub(r"\$\{?[a-z_]+\}?", ".*", expression)  # dashboard variables inside matchers
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                names.update(m.value for m in node.matchers.matchers if m.name == "__name__")
            return
        for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attribute, None)
            if child is not None:
                walk(child)
        for child in getattr(node, "args", None) or ():
            walk(child)

    walk(promql_parser.parse(expression))
    return names


class Scraper:
    """Scrapes URLs every ``interval_s`` from a thread, as Prometheus would
    while a benchmark runs (so the metrics' cost includes being read)."""

    def __init__(self, urls: Iterable[str], interval_s: float) -> None:
        self.urls = list(urls)
        self.interval_s = interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Scraper":
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for url in self.urls:
                exposition(url)
                self.scrapes += 1


# ---- what the benchmarks measure the metrics' cost with (docs/benchmarks.md) --------------------


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--without-grpc-metrics", action="store_true",
        help=f"start the services with {BENCHMARK_WITHOUT_GRPC_METRICS}=1: no gRPC metrics interceptor (baseline)",
    )
    group.add_argument(
        "--scrape-metrics-every", type=float, default=0.0, metavar="SECONDS",
        help="scrape the services' /metrics this often while measuring (0: never)",
    )


def metrics_env(args: argparse.Namespace) -> dict[str, str]:
    return {BENCHMARK_WITHOUT_GRPC_METRICS: "1"} if args.without_grpc_metrics else {}


def metrics_note(args: argparse.Namespace, scraper: Scraper) -> str:
    if args.without_grpc_metrics:
        return "gRPC metrics interceptor off"
    scraped = f", /metrics scraped {scraper.scrapes} times meanwhile" if scraper.scrapes else ""
    return f"gRPC metrics interceptor on{scraped}"
