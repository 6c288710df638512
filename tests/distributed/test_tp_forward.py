"""The sharded forward at tp=2 (two processes, gloo) gives the tp=1 logits: replicated KV heads, bias, tied and padded vocabulary, q/k norm."""

import pytest
import torch

from bare_engine.distributed.executor import TPExecutor
from bare_engine.distributed.worker import KVPool, ModelLoad
from bare_engine.errors import ModelLoadError
from bare_engine.model.config import load_model_config
from bare_engine.model.layers.attention import TorchBackend
from bare_engine.model.loader import load_model
from bare_engine.testing import make_model_dir
from bare_engine.worker.forward import allocate_kv_cache, run_forward
from bare_engine.worker.input_batch import StepInputs, StepLayout

pytestmark = pytest.mark.tp

CPU = torch.device("cpu")
MAX_LEN, BLOCK, BLOCKS = 64, 16, 8
# Logits to 1e-5 (the engine tests check greedy tokens for every family).
MODELS = {
    "kv_heads_below_tp": ("llama", {"num_key_value_heads": 1}),
    "qwen2_bias_tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3_qk_norm_sharded": ("qwen3", {"max_shard_size": "40KB"}),
}


@pytest.fixture(scope="module")
def executor():
    ex = TPExecutor([CPU, CPU], "torch", num_threads=1)
    try:
        yield ex
    finally:
        ex.shutdown()


def _step(seqs, start, block_tables) -> StepInputs:
    """Inputs for one step: each sequence's tokens from ``start[i]`` on; the last token of each is sampled."""
    ids, pos, slots, cu, ctx, last = [], [], [], [0], [], []
    for tokens, s, table in zip(seqs, start, block_tables):
        ids += tokens[s:]
        pos += range(s, len(tokens))
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(s, len(tokens))]
        cu.append(cu[-1] + len(tokens) - s)
        ctx.append(len(tokens))
        last.append(cu[-1] - 1)
    width = max(map(len, block_tables))
    tables = [x for t in block_tables for x in t + [0] * (width - len(t))]
    layout = StepLayout(len(ids), len(seqs), len(last), width, max(c - s for c, s in zip(ctx, start)), max(ctx))
    buffer = torch.tensor(ids + pos + slots + cu + ctx + last + tables, dtype=torch.int32)
    return StepInputs.from_buffer(buffer, layout)


def test_sharded_forward_equals_tp1(executor, tmp_path_factory):
    backend = TorchBackend()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 480, (n,), generator=gen).tolist() for n in (5, 19)]
    tables = [[0], [1, 2]]
    for index, (name, (arch, kw)) in enumerate(MODELS.items()):
        model_dir = make_model_dir(tmp_path_factory.mktemp(name), arch, **kw)
        config = load_model_config(model_dir)
        executor.load([ModelLoad(name, str(model_dir), MAX_LEN, torch.float32)])
        shard = load_model(config, model_dir, CPU, torch.float32, MAX_LEN, group=executor.group)
        executor.collect("load")
        executor.allocate_kv([KVPool([name], BLOCKS, BLOCK)], None)
        executor.collect("kv")
        whole = load_model(config, model_dir, CPU, torch.float32, MAX_LEN)
        caches = {
            "shard": allocate_kv_cache(config.num_layers, BLOCKS, BLOCK, shard.num_kv_heads, config.head_dim, torch.float32, CPU),
            "whole": allocate_kv_cache(config.num_layers, BLOCKS, BLOCK, config.num_kv_heads, config.head_dim, torch.float32, CPU),
        }
        steps = [_step(seqs, [0, 0], tables), _step([s + [7] for s in seqs], [len(s) for s in seqs], tables)]
        for step in steps:  # a prefill, then a decode on the cached K/V
            executor.send_step(index, step)
            again = StepInputs.from_buffer(step.buffer, step.layout)  # its own metadata (backends cache per-step plans there)
            with torch.inference_mode():
                got = run_forward(shard, caches["shard"], backend, None, step.input_ids, step.positions, step.meta, step.logits_indices)
                want = run_forward(whole, caches["whole"], backend, None, again.input_ids, again.positions, again.meta, again.logits_indices)
            assert got.shape == (2, config.vocab_size)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_worker_exception_is_raised_on_the_driver_with_its_rank(executor):
    """Runs last: a failed worker ends the group."""
    executor.load([ModelLoad("missing", "/nonexistent/model", MAX_LEN, torch.float32)])
    with pytest.raises(ModelLoadError, match="tensor-parallel worker rank 1: model directory not found: /nonexistent/model"):
        executor.collect("load")
    with pytest.raises(ModelLoadError, match="rank 1"):  # every later call, and the worker is gone
        executor.send_step(0, None)
    assert not executor.procs[0].is_alive()
