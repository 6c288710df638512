"""Evaluate JSONL files: one FileReport per file, a text table, and the similarity histogram."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bare_engine.eval.checks import CheckResult
from bare_engine.eval.diversity import (
    MAX_EXACT_RECORDS, Similarities, distinct_n, mean_pairwise_similarity, normalize,
    pairwise_similarities, vendi_score,
)
from bare_engine.eval.embed import Embedder
from bare_engine.eval.judge import JudgeResult
from bare_engine.eval.records import fields_text, read_jsonl, select_fields
from bare_engine.errors import ConfigError


@dataclass
class FileReport:
    file: str
    records: int
    skipped: int  # records without the selected field
    mean_similarity: float | None
    similarities: Similarities = field(repr=False)
    vendi: float
    distinct: dict[int, float]
    check: CheckResult | None = None
    judge: JudgeResult | None = None

    def to_json(self) -> dict:
        sims = self.similarities.values
        return {
            "file": self.file,
            "records": self.records,
            "skipped": self.skipped,
            "mean_similarity": self.mean_similarity,
            "similarity_std": float(sims.std()) if len(sims) else None,
            "similarity_pairs": self.similarities.describe(),
            "similarity_pairs_sampled": self.similarities.sampled,
            "vendi": self.vendi,
            **{f"distinct_{n}": v for n, v in self.distinct.items()},
            "check": self.check.to_json() if self.check else None,
            "judge": self.judge.to_json() if self.judge else None,
        }


def load_examples(path: str | Path, field: str | None) -> tuple[list[dict[str, str]], int]:
    return select_fields(read_jsonl(path), field, str(path))


def diversity_report(name: str, examples: list[dict[str, str]], skipped: int, embedder: Embedder,
                     max_exact_records: int = MAX_EXACT_RECORDS, seed: int = 0) -> FileReport:
    texts = [fields_text(f) for f in examples]
    embeddings = embedder(texts)
    if len(embeddings) != len(texts):
        raise ConfigError(f"the embedder returned {len(embeddings)} embeddings for {len(texts)} texts")
    x = normalize(embeddings)
    return FileReport(
        file=name,
        records=len(texts),
        skipped=skipped,
        mean_similarity=mean_pairwise_similarity(x),
        similarities=pairwise_similarities(x, max_exact_records, seed=seed),
        vendi=vendi_score(x),
        distinct={n: distinct_n(texts, n) for n in (1, 2, 3)},
    )


def format_table(reports: list[FileReport]) -> str:
    def num(value, fmt=".3f"):
        return "-" if value is None else format(value, fmt)

    header = ["file", "records", "mean_sim", "vendi", "dist-1", "dist-2", "dist-3"]
    with_check = any(r.check for r in reports)
    with_judge = any(r.judge for r in reports)
    header += ["check"] * with_check + ["IR", "judge_fail"] * with_judge
    rows = []
    for r in reports:
        row = [r.file, str(r.records), num(r.mean_similarity), num(r.vendi, ".2f")]
        row += [num(r.distinct[n]) for n in (1, 2, 3)]
        if with_check:
            row.append(num(r.check.pass_rate if r.check else None))
        if with_judge:
            row += [num(r.judge.ir if r.judge else None), str(r.judge.parse_failures) if r.judge else "-"]
        rows.append(row)
    widths = [max(len(line[c]) for line in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                       for c, (cell, w) in enumerate(zip(line, widths, strict=True)))
             for line in [header, *rows]]
    notes = [f"{r.file}: similarity distribution from {r.similarities.describe()}; mean over all pairs"
             for r in reports if r.similarities.sampled]
    notes += [f"{r.file}: {r.skipped} records without the selected field were skipped" for r in reports if r.skipped]
    return "\n".join(lines + notes)


def plot_histograms(reports: list[FileReport], out: str | Path) -> None:
    """Overlaid density histograms of pairwise cosine similarity, one per file, as PNG."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'bare-engine[eval]'") from None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    shown = [r for r in reports if len(r.similarities.values)]
    low = min([0.0] + [float(r.similarities.values.min()) for r in shown])
    for r in shown:
        label = f"{Path(r.file).name} (mean {r.mean_similarity:.3f})"
        ax.hist(r.similarities.values, bins=50, range=(low, 1.0 + 1e-9), density=True, alpha=0.5, label=label)
    ax.set_xlabel("pairwise cosine similarity (lower is more diverse)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
