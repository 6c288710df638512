"""Tensor-parallel shards: sliced loading, the sharded forward at tp=2 (gloo) equal to tp=1, step messages."""

import pytest
import torch
from safetensors.torch import load_file

from bare_engine.config import EngineConfig
from bare_engine.distributed.message import decode_step, encode_step
from bare_engine.errors import ConfigError
from bare_engine.model import loader
from bare_engine.model.config import load_model_config
from bare_engine.model.lora import LoraAdapter
from bare_engine.testing import make_model_dir
from bare_engine.worker.input_batch import StepInputs, StepLayout

pytestmark = pytest.mark.tp

CPU = torch.device("cpu")
MAX_LEN = 128


class RankOf:
    """A rank of a group without collectives: enough to build and load a shard."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def all_reduce(self, x):
        raise AssertionError("no collective while loading")

    gather = all_reduce


def load(model_dir, group=None, hook=None):
    config = load_model_config(model_dir)
    kwargs = {} if group is None else {"group": group}
    return loader.load_model(config, model_dir, CPU, torch.float32, MAX_LEN, hook, **kwargs)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    cache = {}

    def get(arch="llama", **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_model_dir(tmp_path_factory.mktemp(arch), arch, **kw)
        return cache[key]

    return get


# ----- sliced loading (one process) ---------------------------------------------------------


def test_each_rank_reads_only_its_slices(dirs, monkeypatch):
    model_dir = dirs("llama", vocab_size=515)  # odd vocabulary: the last rank's rows are padded
    full = load_file(model_dir / "model.safetensors")
    reads = {}
    real_read = loader._TensorSlice.read

    def counting_read(self, index):
        tensor = real_read(self, index)
        reads[self.name] = reads.get(self.name, 0) + tensor.numel()
        return tensor

    monkeypatch.setattr(loader._TensorSlice, "read", counting_read)
    shards = []
    for rank in range(2):
        reads.clear()
        shards.append(load(model_dir, RankOf(rank, 2)))
        for name, tensor in full.items():
            if "norm" in name:
                expected = tensor.numel()  # replicated
            elif name.startswith(("model.embed_tokens", "lm_head")):
                expected = (258 if rank == 0 else 257) * tensor.shape[1]  # 515 rows: 258 + 257 (+ 1 zero row)
            else:
                expected = tensor.numel() // 2
            assert reads[name] == expected, name
    # The shards put together are the checkpoint.
    a, b = (dict(s.named_parameters()) for s in shards)
    q = full["model.layers.0.self_attn.q_proj.weight"]
    k = full["model.layers.0.self_attn.k_proj.weight"]
    v = full["model.layers.0.self_attn.v_proj.weight"]
    for shard, rank in ((a, 0), (b, 1)):
        qkv = shard["model.layers.0.self_attn.qkv_proj.weight"]  # 2 of 4 query heads, 1 of 2 KV heads
        torch.testing.assert_close(qkv, torch.cat([q[32 * rank:32 * rank + 32], k[16 * rank:16 * rank + 16], v[16 * rank:16 * rank + 16]]))
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(torch.cat([a[name], b[name]], 1), full[name])
    head = torch.cat([a["lm_head.weight"], b["lm_head.weight"]])
    assert torch.equal(head[:515], full["lm_head.weight"]) and not head[515:].any()


def test_kv_heads_fewer_than_ranks_are_replicated(dirs):
    model_dir = dirs("llama", num_key_value_heads=1)
    full = load_file(model_dir / "model.safetensors")
    k = full["model.layers.0.self_attn.k_proj.weight"]
    for rank in range(2):
        shard = load(model_dir, RankOf(rank, 2))
        attn = shard.model.layers[0].self_attn
        assert (attn.num_heads, attn.num_kv_heads) == (2, 1)
        assert torch.equal(attn.qkv_proj.weight[32:48], k)


def test_lora_merge_of_a_slice_is_the_slice_of_the_merge(dirs, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base_dir = dirs("llama")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(3)
    targets = ["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "embed_tokens", "lm_head"]
    peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=8, init_lora_weights=False, target_modules=targets)).save_pretrained(tmp_path)
    adapter = LoraAdapter.from_dir(tmp_path)
    whole = load(base_dir, hook=adapter.merge)
    halves = [load(base_dir, RankOf(r, 2), hook=LoraAdapter.from_dir(tmp_path).merge) for r in range(2)]
    w = dict(whole.named_parameters())
    a, b = (dict(h.named_parameters()) for h in halves)
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        torch.testing.assert_close(torch.cat([a[name], b[name]], 1), w[name])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # the tokenizer's odd vocabulary: one padding row
        torch.testing.assert_close(torch.cat([a[name], b[name]])[: len(w[name])], w[name])
    name = "model.layers.0.mlp.gate_up_proj.weight"  # [gate | up], each split in two
    gate_up = torch.cat([a[name][:64], b[name][:64], a[name][64:], b[name][64:]])
    torch.testing.assert_close(gate_up, w[name])


# ----- config errors ------------------------------------------------------------------------


def test_heads_that_do_not_divide_name_the_numbers(dirs):
    config = load_model_config(dirs("llama", num_attention_heads=4, num_key_value_heads=2))
    config.check_tensor_parallel(2)
    config.check_tensor_parallel(4)  # 2 KV heads replicated over 4 ranks
    with pytest.raises(ConfigError, match="tensor_parallel_size 3 does not divide num_attention_heads 4"):
        config.check_tensor_parallel(3)
    config.num_kv_heads = 3
    with pytest.raises(ConfigError, match="num_key_value_heads 3"):
        config.check_tensor_parallel(2)


def test_engine_config_tensor_parallel_size():
    with pytest.raises(ConfigError, match="tensor_parallel_size must be a positive integer, got 0"):
        EngineConfig(tensor_parallel_size=0)
    assert EngineConfig(device="cpu", tensor_parallel_size=2).rank_devices() == [CPU, CPU]
    with pytest.raises(ConfigError, match="device must be auto, cuda or cpu, got 'cpu:0'"):
        EngineConfig(device="cpu:0", tensor_parallel_size=2).rank_devices()


# ----- step message -------------------------------------------------------------------------


def test_step_message_round_trip():
    layout = StepLayout(num_tokens=4, num_seqs=2, num_sampled=2, max_blocks=2, max_query_len=3, max_context_len=7)
    buffer = torch.arange(layout.size, dtype=torch.int32)
    data = encode_step(3, StepInputs.from_buffer(buffer, layout))
    assert len(data) == 4 * (8 + layout.size)  # 8 header ints and the buffer: nothing else
    index, got = decode_step(data, CPU)
    assert index == 3 and got.layout == layout and torch.equal(got.buffer, buffer)
    assert got.input_ids.tolist() == [0, 1, 2, 3] and got.logits_indices.tolist() == [17, 18]
    assert got.meta.block_tables.tolist() == [[19, 20], [21, 22]] and got.meta.max_context_len == 7


def test_cli_tensor_parallel_size_that_does_not_divide_is_one_error_line(dirs):
    from click.testing import CliRunner

    from bare_engine.cli import main

    model_dir = dirs("llama")
    result = CliRunner().invoke(main, ["generate", "--model", str(model_dir), "--prompt", "hi", "--device", "cpu",
                                       "--tensor-parallel-size", "3"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {model_dir.name}: tensor_parallel_size 3 does not divide num_attention_heads 4"]
