"""Pick the grammar library: xgrammar vs llguidance on SmolLM2's tokenizer (vocab 49k).

    python benchmarks/structured_library.py

For each library: the time to build its tokenizer view, to compile a JSON schema (a cold
compile, the cache cleared), and the per-step cost of filling the next-token bitmask of
64 matchers that advance through a valid JSON document token by token (the fill is what
the engine pays per decode step; advancing is timed separately). Results go to
benchmarks/results/structured_library.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"]},
    },
    "required": ["name", "age", "role", "tags", "address"],
}
DOCUMENT = '{"name": "Alice", "age": 31, "role": "admin", "tags": ["a", "b"], "address": {"city": "Paris", "zip": "75001"}}'
BATCH = 64


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_xgrammar(tokenizer, doc_ids: list[int]) -> dict:
    import torch
    import xgrammar as xgr

    info, t_info = timed(lambda: xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer)))
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    compiled, t_compile = timed(lambda: compiler.compile_json_schema(json.dumps(SCHEMA)))
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(BATCH)]
    batch = xgr.BatchGrammarMatcher(max_threads=1)
    bitmask = xgr.allocate_token_bitmask(BATCH, info.vocab_size)
    fill = accept = 0.0
    for token in doc_ids:
        _, t = timed(lambda: batch.batch_fill_next_token_bitmask(matchers, bitmask))
        fill += t
        _, t = timed(lambda: [m.accept_token(token) for m in matchers])
        accept += t
    assert all(m.is_completed() or not m.is_terminated() for m in matchers)
    unpack = unpack_cost(bitmask, info.vocab_size, torch)
    return {"tokenizer_info_s": t_info, "compile_json_schema_s": t_compile,
            "fill_bitmask_ms_per_step_batch64": 1e3 * fill / len(doc_ids),
            "accept_ms_per_step_batch64": 1e3 * accept / len(doc_ids), "unpack_ms_batch64": unpack}


def bench_llguidance(tokenizer, doc_ids: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch as llt
    import torch

    info, t_info = timed(lambda: llguidance.hf.from_tokenizer(tokenizer))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    _, t_compile = timed(lambda: llguidance.LLMatcher(info, grammar))
    matchers = [llguidance.LLMatcher(info, grammar) for _ in range(BATCH)]
    executor = llguidance.LLExecutor(num_threads=1)
    bitmask = llt.allocate_token_bitmask(BATCH, info.vocab_size)
    fill = accept = 0.0
    for token in doc_ids:
        _, t = timed(lambda: llt.fill_next_token_bitmask_par(executor, list(zip(matchers, range(BATCH))), bitmask))
        fill += t
        _, t = timed(lambda: [m.consume_token(token) for m in matchers])
        accept += t
    errors = [m.get_error() for m in matchers if m.is_error()]
    unpack = unpack_cost(bitmask, info.vocab_size, torch)
    return {"tokenizer_info_s": t_info, "compile_json_schema_s": t_compile,
            "fill_bitmask_ms_per_step_batch64": 1e3 * fill / len(doc_ids),
            "accept_ms_per_step_batch64": 1e3 * accept / len(doc_ids), "unpack_ms_batch64": unpack,
            "errors": errors[:1]}


def unpack_cost(bitmask, vocab_size: int, torch) -> float:
    """The packed int32 bitmask -> [B, V] bool mask the sampler takes (bare_engine/structured/bitmask.py)."""
    from bare_engine.structured.bitmask import unpack_bitmask

    _, t = timed(lambda: [unpack_bitmask(bitmask, vocab_size) for _ in range(20)])
    return 1e3 * t / 20


def main() -> None:
    from bare_engine.model.gguf_import import smollm2_dir
    from bare_engine.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir())
    doc_ids = tokenizer(DOCUMENT, add_special_tokens=False).input_ids
    results = {"vocab_size": len(tokenizer), "batch": BATCH, "document_tokens": len(doc_ids),
               "xgrammar": bench_xgrammar(tokenizer, doc_ids), "llguidance": bench_llguidance(tokenizer, doc_ids)}
    out = Path(__file__).parent / "results" / "structured_library.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
