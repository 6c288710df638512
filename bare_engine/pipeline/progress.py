"""Progress bar (records done / target, tokens/s per model, ETA) and the end-of-run summary."""

from __future__ import annotations

import time

from tqdm import tqdm

from bare_engine.pipeline.runner import RunResult

POSTFIX_INTERVAL_S = 0.5


class Progress:
    def __init__(self, engine, target: int, initial: int, enabled: bool = True):
        self.engine = engine
        self.bar = tqdm(total=target, initial=initial, unit="rec", desc="records", disable=not enabled,
                        dynamic_ncols=True)
        self.start = self.last_postfix = time.perf_counter()
        self.start_tokens = self._generated()

    def _generated(self) -> dict[str, int]:
        return {name: self.engine.stats[name].generated_tokens for name in self.engine.model_names}

    def refresh(self, written: int) -> None:
        if written > self.bar.n:
            self.bar.update(written - self.bar.n)
        now = time.perf_counter()
        if now - self.last_postfix >= POSTFIX_INTERVAL_S:
            self.last_postfix = now
            elapsed = max(now - self.start, 1e-9)
            rates = {
                name: f"{(tokens - self.start_tokens.get(name, 0)) / elapsed:.0f} tok/s"
                for name, tokens in self._generated().items()
            }
            self.bar.set_postfix(rates, refresh=False)

    def close(self) -> None:
        self.bar.close()


def summary_lines(result: RunResult, out: str) -> list[str]:
    status = "interrupted" if result.interrupted else ("done" if result.complete else "stopped")
    lines = [
        f"{status}: {result.records}/{result.target} records in {out} "
        f"({result.written} new, {result.candidates} candidates, {result.wall_s:.1f}s)"
    ]
    if result.stop_reason and not result.complete:
        lines.append(f"stopped early: {result.stop_reason}")
    if result.drops:
        drops = ", ".join(f"{reason} {n}" for reason, n in sorted(result.drops.items()))
        lines.append(f"dropped {sum(result.drops.values())}: {drops}")
    for name, m in result.models.items():
        lines.append(
            f"{name}: {m['generated_tokens']} generated / {m['prompt_tokens']} prompt tokens, "
            f"{m['tokens_per_s']:.1f} tok/s"
        )
    for r in (result.data_parallel or {}).get("per_replica", []):
        rates = ", ".join(f"{name} {rate:.1f} tok/s" for name, rate in r["tokens_per_s"].items())
        restarts = f", {r['restarts']} restart(s)" if r["restarts"] else ""
        lines.append(f"replica {r['replica']} ({r['node']}): {r['candidates']} candidates, {r['valid']} valid, "
                     f"{rates}{restarts}")
    if result.interrupted:
        lines.append("run the same command again to resume")
    return lines
