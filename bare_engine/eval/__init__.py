"""Evaluation of generated data: diversity metrics, verifiable checks, and the IR judge."""

from bare_engine.eval.diversity import distinct_n, mean_pairwise_similarity, pairwise_similarities, vendi_score
from bare_engine.eval.embed import Embedder, hash_embedder, load_embedder
from bare_engine.eval.records import fields_text, read_jsonl, record_fields
from bare_engine.eval.report import FileReport, diversity_report

__all__ = [
    "Embedder", "FileReport", "distinct_n", "diversity_report", "fields_text", "hash_embedder", "load_embedder",
    "mean_pairwise_similarity", "pairwise_similarities", "read_jsonl", "record_fields", "vendi_score",
]
