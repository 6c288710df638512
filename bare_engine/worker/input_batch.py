"""Persistent per-row state of one model's running sequences, and the step's flat inputs.

A sequence gets a row when it first appears in a batch and keeps it until it leaves the
running set (finished, aborted or preempted). The row's block table lives in a
preallocated array and is only written when the sequence gets a new block, so building a
step costs one short Python pass over the batch plus a few vectorised numpy operations,
with no per-token Python work for decodes.

The step's inputs are one flat int32 buffer on the host (token ids, positions, slot
mapping, cu_seqlens, context lengths, sampled rows, block tables), described by a small
``StepLayout``; ``StepInputs.to_device`` copies it with a single host-to-device transfer.
A tensor-parallel runner can broadcast the same buffer and layout to its workers.

With overlapped steps (engine/steps.py) a decode row's input token may still be pending on the
device (counted in ``seq.num_pending``, not yet in its token_ids): the buffer then also lists where those tokens go and
which of the previous step's sampled tokens they are, and ``gather_pending`` fills them in on
the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bare_engine.model.layers.attention import AttentionMetadata
from bare_engine.engine.scheduler import ScheduledBatch
from bare_engine.engine.sequence import Sequence


@dataclass(frozen=True)
class StepLayout:
    """Sizes of the sections of a step's flat buffer, in order, and the two scalar maxima."""

    num_tokens: int
    num_seqs: int
    num_sampled: int
    max_blocks: int  # block table columns in this step
    max_query_len: int
    max_context_len: int
    num_pending: int = 0  # input tokens still on the device, from the previous step's samples

    def sections(self) -> list[tuple[str, int]]:
        t, b, p = self.num_tokens, self.num_seqs, self.num_pending
        return [("input_ids", t), ("positions", t), ("slot_mapping", t), ("cu_seqlens_q", b + 1),
                ("context_lens", b), ("logits_indices", self.num_sampled), ("block_tables", b * self.max_blocks),
                ("pending_dst", p), ("pending_src", p)]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.sections())


@dataclass
class StepInputs:
    """A step's tensors: views into one int32 buffer (token ids, positions, slots and
    logits indices are widened to int64 where they live)."""

    buffer: torch.Tensor
    layout: StepLayout
    input_ids: torch.Tensor
    positions: torch.Tensor
    logits_indices: torch.Tensor
    meta: AttentionMetadata
    pending_dst: torch.Tensor  # positions in input_ids of the pending tokens
    pending_src: torch.Tensor  # their index among the previous step's sampled tokens

    @classmethod
    def from_buffer(cls, buffer: torch.Tensor, layout: StepLayout) -> StepInputs:
        views, offset = {}, 0
        for name, n in layout.sections():
            views[name] = buffer[offset:offset + n]
            offset += n
        meta = AttentionMetadata(
            slot_mapping=views["slot_mapping"].long(),
            block_tables=views["block_tables"].view(layout.num_seqs, layout.max_blocks),
            context_lens=views["context_lens"],
            cu_seqlens_q=views["cu_seqlens_q"],
            max_query_len=layout.max_query_len,
            max_context_len=layout.max_context_len,
        )
        return cls(buffer, layout, views["input_ids"].long(), views["positions"].long(),
                   views["logits_indices"].long(), meta, views["pending_dst"], views["pending_src"])

    def to_device(self, device: torch.device) -> StepInputs:
        if self.buffer.device == device:
            return self
        return StepInputs.from_buffer(self.buffer.to(device, non_blocking=True), self.layout)

    def gather_pending(self, sampled: torch.Tensor | None) -> None:
        """Put the previous step's sampled tokens (``sampled``, on the device) into the pending input ids."""
        if self.layout.num_pending:
            self.input_ids[self.pending_dst.long()] = sampled[self.pending_src.long()]


@dataclass
class PreparedStep:
    inputs: StepInputs
    sampled_seqs: list[Sequence]  # sequences whose next token this step samples, in logits order
    sampled_rows: np.ndarray  # their rows
    sampled_lens: np.ndarray  # their lengths (context after this step)
    num_prompt_tokens: int  # prompt tokens computed in this step (stats)


class InputBatch:
    def __init__(self, max_rows: int, max_blocks_per_seq: int, block_size: int, pin: bool):
        self.block_size = block_size
        self.pin = pin
        self.block_tables = np.zeros((max_rows, max_blocks_per_seq), dtype=np.int32)
        self.num_table_blocks = [0] * max_rows  # blocks of each row's table written so far
        self.row_seq: list[Sequence | None] = [None] * max_rows
        self.free_rows = list(range(max_rows - 1, -1, -1))  # pop() hands out the lowest row
        self.on_assign = None  # callback(row, seq) when a sequence takes a row
        self.staging = torch.zeros(0, dtype=torch.int32)  # host buffer of the flat inputs, grown on demand
        self.staging_np = self.staging.numpy()
        self._copied = None  # CUDA event: the last copy out of the staging buffer has finished

    # ----- rows -------------------------------------------------------------------------

    def assign(self, seq: Sequence) -> int:
        row = self.free_rows.pop()
        seq.row = row
        self.row_seq[row] = seq
        self.block_tables[row, :self.num_table_blocks[row]] = 0  # no stale entries from the last occupant
        self.num_table_blocks[row] = 0
        if self.on_assign is not None:
            self.on_assign(row, seq)
        return row

    def release(self, seq: Sequence) -> None:
        if seq.row is not None:
            self.row_seq[seq.row] = None
            self.free_rows.append(seq.row)
            seq.row = None

    def _sync_table(self, row: int, seq: Sequence) -> None:
        done = self.num_table_blocks[row]
        table = seq.block_table
        self.block_tables[row, done:len(table)] = table[done:]
        self.num_table_blocks[row] = len(table)

    # ----- a step -----------------------------------------------------------------------

    def to_device(self, inputs: StepInputs, device: torch.device) -> StepInputs:
        """One host-to-device copy of the step's buffer (the staging buffer is reused next step)."""
        moved = inputs.to_device(device)
        if device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        return moved

    def prepare(self, batch: ScheduledBatch) -> PreparedStep:
        if self._copied is not None:  # the async copy of the previous step must not see this one's inputs
            self._copied.synchronize()
            self._copied = None
        rows, starts, input_ids = [], [], []
        sampled_seqs, sampled_idx = [], []
        pending_dst, pending_src = [], []
        prompt_tokens = 0
        num_table_blocks = self.num_table_blocks
        add_row, add_start, add_token = rows.append, starts.append, input_ids.append
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            row = seq.row
            if row is None:
                row = self.assign(seq)
            if len(seq.block_table) != num_table_blocks[row]:
                self._sync_table(row, seq)
            start = seq.num_computed_tokens
            tokens = seq.token_ids
            add_row(row)
            add_start(start)
            if n == 1:
                if start < len(tokens):
                    add_token(tokens[start])
                else:  # sampled last step, not read back yet: only a decode can hold one
                    pending_dst.append(len(input_ids))
                    pending_src.append(seq.sample_index)
                    add_token(0)
            else:
                input_ids.extend(tokens[start:start + n])
            prompt_tokens += seq.prompt_tokens_in_step(n)
            if start + n == len(tokens) + seq.num_pending:
                seq.sample_index = len(sampled_seqs)
                sampled_seqs.append(seq)
                sampled_idx.append(i)
        counts = np.array(batch.num_new_tokens, dtype=np.int64)
        rows_np = np.array(rows, dtype=np.int64)
        starts_np = np.array(starts, dtype=np.int64)
        ends = starts_np + counts
        layout = StepLayout(
            num_tokens=len(input_ids), num_seqs=len(rows), num_sampled=len(sampled_idx),
            max_blocks=-(-int(ends.max()) // self.block_size),
            max_query_len=int(counts.max()), max_context_len=int(ends.max()), num_pending=len(pending_dst),
        )
        if layout.size > len(self.staging):
            self.staging = torch.zeros(2 * layout.size, dtype=torch.int32, pin_memory=self.pin)
            self.staging_np = self.staging.numpy()
        self._fill(layout, input_ids, rows_np, starts_np, counts, ends, sampled_idx, pending_dst, pending_src)
        inputs = StepInputs.from_buffer(self.staging[:layout.size], layout)
        return PreparedStep(inputs, sampled_seqs, rows_np[sampled_idx], ends[sampled_idx], prompt_tokens)

    def _fill(self, layout: StepLayout, input_ids, rows, starts, counts, ends, sampled_idx, pending_dst,
              pending_src) -> None:
        bs = self.block_size
        views, offset = {}, 0
        for name, n in layout.sections():
            views[name] = self.staging_np[offset:offset + n]
            offset += n
        views["input_ids"][:] = input_ids
        cu = views["cu_seqlens_q"]
        cu[0] = 0
        np.cumsum(counts, out=cu[1:])
        if layout.num_tokens == layout.num_seqs:  # decodes only: one token per row
            positions, token_rows = starts, rows
        else:
            token_rows = np.repeat(rows, counts)
            positions = np.arange(layout.num_tokens) - np.repeat(cu[:-1] - starts, counts)
        views["positions"][:] = positions
        blocks = self.block_tables[token_rows, positions // bs]
        views["slot_mapping"][:] = blocks * bs + positions % bs
        views["context_lens"][:] = ends
        views["logits_indices"][:] = cu[1:][sampled_idx] - 1
        views["block_tables"].reshape(layout.num_seqs, layout.max_blocks)[:] = \
            self.block_tables[rows, :layout.max_blocks]
        if pending_dst:
            views["pending_dst"][:] = pending_dst
            views["pending_src"][:] = pending_src
