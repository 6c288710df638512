from bare_engine.engine.block_manager import BlockManager
from bare_engine.engine.sequence import Sequence
from bare_engine.sampling_params import SamplingParams

BS = 4


def seq(tokens, seq_id=0, model="m"):
    return Sequence(seq_id, str(seq_id), 0, model, tokens, SamplingParams(), seed=0, arrival=seq_id)


def admit(manager, s, model="m"):
    hits = manager.match_prefix(s, model)
    manager.take_prefix(s, hits)
    manager.grow(s, len(s))
    s.num_computed_tokens = len(s)
    manager.commit(s, model)
    return hits


def test_allocation_refcounts_and_no_leak():
    m = BlockManager(8, BS)
    a, b = seq(list(range(10)), 0), seq(list(range(100, 107)), 1)
    admit(m, a)
    admit(m, b)
    assert len(a.block_table) == 3 and len(b.block_table) == 2
    assert m.num_free_blocks == 3
    assert all(m.blocks[i].ref_count == 1 for i in a.block_table + b.block_table)
    m.free(a)
    m.free(b)
    assert m.num_free_blocks == 8 and all(blk.ref_count == 0 for blk in m.blocks)


def test_prefix_hit_shares_blocks_and_excludes_last_token_block():
    m = BlockManager(16, BS)
    a = seq(list(range(12)), 0)  # three full blocks
    admit(m, a)
    b = seq(list(range(8)) + [50, 51, 52], 1)
    hits = admit(m, b)
    assert hits == a.block_table[:2]
    assert all(m.blocks[i].ref_count == 2 for i in hits)
    # A prompt that is entirely cached still recomputes its last block.
    c = seq(list(range(12)), 2)
    assert m.match_prefix(c, "m") == a.block_table[:2]


def test_hash_miss_on_other_model_and_on_different_tokens():
    m = BlockManager(16, BS)
    admit(m, seq(list(range(9)), 0, model="base"))
    assert m.match_prefix(seq(list(range(9)), 1, model="instruct"), "instruct") == []
    assert m.match_prefix(seq([0, 1, 2, 99, 4, 5, 6, 7, 8], 2, model="base"), "base") == []


def test_hit_is_verified_against_tokens():
    m = BlockManager(16, BS)
    a = seq(list(range(9)), 0)
    admit(m, a)
    # Corrupt the recorded tokens: a hash match alone must not count as a hit.
    m.blocks[a.block_table[0]].token_ids = (9, 9, 9, 9)
    assert m.match_prefix(seq(list(range(9)), 1), "m") == []


def test_freed_cached_blocks_hit_until_evicted():
    m = BlockManager(4, BS)
    a = seq(list(range(9)), 0)
    admit(m, a)
    m.free(a)
    again = seq(list(range(9)), 1)
    assert len(admit(m, again)) == 2 and m.num_hit_blocks == 2
    m.free(again)
    # Fill the pool with other tokens: the cached blocks get reused and their hashes dropped.
    other = seq(list(range(200, 216)), 2)
    admit(m, other)
    assert m.match_prefix(seq(list(range(9)), 3), "m") == []
    m.free(other)
    assert m.num_free_blocks == 4 and not any(b.ref_count for b in m.blocks)
