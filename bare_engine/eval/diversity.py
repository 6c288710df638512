"""Diversity metrics over a set of records: embedding similarity, Vendi score, distinct-n."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_EXACT_RECORDS = 3000  # above this the similarity distribution comes from sampled pairs
SAMPLED_PAIRS = 1_000_000
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length rows in float64 (all-zero rows stay zero)."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def mean_pairwise_similarity(x: np.ndarray) -> float | None:
    """Exact mean cosine similarity over all pairs i < j of unit rows, in O(n d)."""
    n = len(x)
    if n < 2:
        return None
    total = x.sum(axis=0)
    off_diagonal = total @ total - np.einsum("ij,ij->", x, x)
    return float(off_diagonal / (n * (n - 1)))


@dataclass
class Similarities:
    values: np.ndarray  # cosine similarities of the pairs used
    total_pairs: int
    sampled: bool
    seed: int | None

    def describe(self) -> str:
        if not self.sampled:
            return f"all {self.total_pairs} pairs"
        return f"{len(self.values)} pairs sampled of {self.total_pairs} (seed {self.seed})"


def pairwise_similarities(
    x: np.ndarray, max_exact_records: int = MAX_EXACT_RECORDS, num_pairs: int = SAMPLED_PAIRS, seed: int = 0
) -> Similarities:
    """Cosine similarities of all pairs i < j, or of `num_pairs` random pairs for large sets."""
    n = len(x)
    total = n * (n - 1) // 2
    if n <= max_exact_records:
        i, j = np.triu_indices(n, k=1)
        return Similarities((x @ x.T)[i, j], total, False, None)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, num_pairs)
    j = (i + rng.integers(1, n, num_pairs)) % n  # uniform over j != i
    values = np.concatenate(
        [np.einsum("ij,ij->i", x[i[s:s + 65536]], x[j[s:s + 65536]]) for s in range(0, num_pairs, 65536)]
    )
    return Similarities(values, total, True, seed)


def vendi_score(x: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K = X X^T the cosine kernel of unit rows X.

    K/n and X^T X/n share their non-zero eigenvalues, so the smaller matrix is used: exact
    for any number of records.
    """
    n, d = x.shape
    if n == 0:
        return 0.0
    gram = x @ x.T if n <= d else x.T @ x
    eigenvalues = np.linalg.eigvalsh(gram / n)
    p = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(p * np.log(p))))


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whole set (Li et al., 2016), lowercased words."""
    seen: set[tuple[str, ...]] = set()
    count = 0
    for text in texts:
        tokens = tokenize(text)
        grams = [tuple(tokens[k:k + n]) for k in range(len(tokens) - n + 1)]
        seen.update(grams)
        count += len(grams)
    return len(seen) / count if count else 0.0
