"""Prometheus metrics of the service (one registry per app)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from state.records import Usage


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "refed_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "refed_request_seconds",
            "Request latency by route",
            ["route"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.in_flight = Gauge("refed_in_flight", "Synthesis requests in flight", registry=r)
        self.llm_calls = Counter("refed_llm_calls", "LLM requests made", registry=r)
        self.feedback_calls = Counter("refed_feedback_calls", "Feedback LLM calls", registry=r)
        self.tokens = Counter("refed_llm_tokens", "LLM tokens", ["kind"], registry=r)
        self.cache = Counter(
            "refed_feedback_cache", "Feedback cache lookups", ["result"], registry=r
        )
        self.samples = Counter("refed_samples", "Candidates by status", ["status"], registry=r)
        self.rejected_requests = Counter(
            "refed_refused", "Requests refused by a limit", ["reason"], registry=r
        )
        self.tasks = Gauge(
            "refed_asyncio_tasks", "asyncio tasks alive in the service's event loop", registry=r
        )
        self.tasks.set_function(_task_count)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, open fds, CPU seconds

    def add_usage(self, usage: Usage) -> None:
        self.llm_calls.inc(usage.calls)
        self.feedback_calls.inc(usage.feedback_calls)
        self.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.tokens.labels("completion").inc(usage.completion_tokens)


def _task_count() -> float:
    """Tasks of the running loop (NaN when collected outside one)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return float("nan")
