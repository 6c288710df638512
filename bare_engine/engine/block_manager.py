"""The KV block pool: reference-counted blocks and prefix caching.

A full block is identified by a chained hash of (previous block's hash, its tokens),
seeded with a per-model salt so two models sharing a pool never match each other's
blocks. A hit is verified against the block's actual tokens. The scheduler registers a prompt's
blocks as it schedules their computation, so identical prompts admitted in the same step share
them too (see scheduler.py). Freed blocks keep their
contents and hash until they are reused, least recently freed first, so a later
request (or a preempted one coming back) can still hit them.
"""

from __future__ import annotations

from collections import OrderedDict

from bare_engine.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.num_hit_blocks = 0  # prefix-cache hits so far, for stats and tests

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    @staticmethod
    def chain_hash(prev: int, token_ids: tuple[int, ...]) -> int:
        return hash((prev, token_ids))

    def match_prefix(self, seq: Sequence, salt: str) -> list[int]:
        """Cached blocks holding ``seq``'s leading full blocks, excluding the block of its last token
        (that token must be computed to produce logits). Takes no references."""
        if not self.enable_prefix_caching or needs_prompt_logprobs(seq):
            return []
        hits: list[int] = []
        prev = hash(salt)
        for i in range((len(seq) - 1) // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            prev = self.chain_hash(prev, tokens)
            block_id = self.cached.get(prev)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def free_after_taking(self, hits: list[int]) -> int:
        """Free blocks left once the cached ``hits`` are taken (hits that sit in the free list leave it)."""
        return self.num_free_blocks - sum(1 for b in hits if b in self.free_blocks)

    def take_prefix(self, seq: Sequence, hits: list[int]) -> None:
        assert not seq.block_table
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_blocks[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_computed_tokens = len(hits) * self.block_size
        if seq.num_cached_tokens is None:  # first admission (a preempted sequence's hits are its own)
            seq.num_cached_tokens = seq.num_computed_tokens
        self.num_hit_blocks += len(hits)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Give ``seq`` enough blocks to hold ``num_tokens`` tokens (caller checked ``can_grow``)."""
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._allocate())

    def _allocate(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids = None, None
        block.ref_count = 1
        return block_id

    def commit(self, seq: Sequence, salt: str, num_tokens: int | None = None) -> None:
        """Register the hashes of ``seq``'s blocks that are full within its first ``num_tokens`` tokens
        (default: its computed ones) since the last call. Only tokens known on the host count: a
        token still pending on the device is not in ``token_ids`` yet."""
        if not self.enable_prefix_caching:
            return
        wanted = seq.num_computed_tokens if num_tokens is None else num_tokens
        full = min(wanted, len(seq.token_ids)) // self.block_size
        done = seq.num_hashed_blocks
        if full <= done:
            return
        prev = seq.last_block_hash if done else hash(salt)
        for i in range(done, full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
                block.hash, block.token_ids = self.chain_hash(prev, tokens), tokens
                self.cached.setdefault(block.hash, block.block_id)
            prev = block.hash
        seq.num_hashed_blocks, seq.last_block_hash = full, prev

    def free(self, seq: Sequence) -> None:
        # Tail blocks first, so a shared prefix stays cached the longest.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        seq.num_hashed_blocks, seq.last_block_hash = 0, None


def needs_prompt_logprobs(seq: Sequence) -> bool:
    """Prompt logprobs still to compute: their positions must run through the model, not the cache."""
    return seq.prompt_logprobs is not None and len(seq.prompt_logprobs) < seq.num_prompt_tokens
