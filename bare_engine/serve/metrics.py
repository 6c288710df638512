"""Prometheus metrics of one server, in its own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bare_engine.serve import engine_view

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self, models: list[str]):
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model"]
        self.running = Gauge("bare_engine_num_requests_running", "Sequences running, per model", m, registry=r)
        self.waiting = Gauge("bare_engine_num_requests_waiting", "Sequences waiting in the scheduler, per model",
                             m, registry=r)
        self.kv_used = Gauge("bare_engine_kv_blocks_used", "KV cache blocks in use (all pools)", registry=r)
        self.kv_total = Gauge("bare_engine_kv_blocks_total", "KV cache blocks (all pools)", registry=r)
        self.preemptions = Counter("bare_engine_num_preemptions", "Sequences preempted (recomputed later)",
                                   registry=r)
        self.prompt_tokens = Counter("bare_engine_prompt_tokens", "Prompt tokens of finished (or aborted) requests", m, registry=r)
        self.generation_tokens = Counter("bare_engine_generation_tokens", "Generated tokens", m, registry=r)
        self.finished = Counter("bare_engine_requests_finished", "Requests finished, by finish reason",
                                ["model", "finish_reason"], registry=r)
        self.rejected = Counter("bare_engine_requests_rejected", "Requests refused with 503 (waiting queue full)",
                                registry=r)
        self.ttft = Histogram("bare_engine_time_to_first_token_seconds", "Time to first token", m,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("bare_engine_time_per_output_token_seconds", "Time per output token after the first",
                              m, buckets=TOKEN_BUCKETS, registry=r)
        self.latency = Histogram("bare_engine_e2e_request_latency_seconds", "Request latency", m,
                                 buckets=LATENCY_BUCKETS, registry=r)
        for model in models:  # every series exists from the start, at zero
            for metric in (self.running, self.waiting, self.prompt_tokens, self.generation_tokens,
                           self.ttft, self.tpot, self.latency):
                metric.labels(model)
        self._preemptions_seen = 0

    def observe_engine(self, engine) -> None:
        """Gauges from the engine's state; call between steps on the engine loop thread."""
        for model, (running, waiting) in engine_view.sequence_counts(engine).items():
            self.running.labels(model).set(running)
            self.waiting.labels(model).set(waiting)
        used, total = engine_view.kv_blocks(engine)
        self.kv_used.set(used)
        self.kv_total.set(total)
        preemptions = engine_view.num_preemptions(engine)
        if preemptions > self._preemptions_seen:
            self.preemptions.inc(preemptions - self._preemptions_seen)
            self._preemptions_seen = preemptions

    def observe_finished(self, model: str, finish_reason: str, num_prompt_tokens: int, num_output_tokens: int,
                         latency: float, ttft: float | None, tpot: float | None) -> None:
        self.finished.labels(model, finish_reason).inc()
        self.prompt_tokens.labels(model).inc(num_prompt_tokens)
        self.generation_tokens.labels(model).inc(num_output_tokens)
        self.latency.labels(model).observe(latency)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if tpot is not None:
            self.tpot.labels(model).observe(tpot)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)
