"""Linear and embedding layers in Megatron's tensor-parallel layout, and where each rank's slice of a checkpoint tensor lies.

- ``ColumnParallelLinear``: output rows split over the ranks (fused q/k/v, gate/up, the LM head);
  no communication.
- ``RowParallelLinear``: input columns split (o_proj, down_proj); one all-reduce of the partial
  sums, then the bias once.
- ``VocabParallelEmbedding``: vocabulary rows split; each rank looks up the ids it holds and the
  all-reduce fills in the rest. The vocabulary is padded up to a multiple of the ranks (zero rows;
  their logits are cut off after the gather).

With one rank (``SINGLE_RANK``) every layer reads the whole tensor and computes what a plain
``F.linear`` / ``F.embedding`` does (on the CPU from prepacked weights, see ``pack_weight``: the
rows of a decode step through ``kernels/cpu_linear.c``, more through oneDNN). Each layer answers ``placement(leaf, shard)``: which part
of a checkpoint tensor this rank reads and where in its parameter it goes, so the loader reads
only its slices (``safe_open(...).get_slice``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bare_engine.kernels import cpu_linear


class SingleRank:
    """tensor_parallel_size 1: every collective is the identity."""

    rank = 0
    size = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x


SINGLE_RANK = SingleRank()


@dataclass(frozen=True)
class PackedWeight:
    """A CPU weight in the layouts ``linear`` reads: ``cpu_linear``'s panels for the rows of a decode
    step, oneDNN's prepacked layout past them (either may be None: the kernel did not build, no oneDNN)."""

    panels: cpu_linear.PanelWeight | None
    onednn: torch.Tensor | None


def pack_weight(weight: torch.Tensor) -> PackedWeight | None:
    """``weight`` packed for ``linear(..., packed=)``; None off the CPU, or where neither layout takes it.

    On the CPU a linear over the rows of a decode step runs 1.2-1.7x faster from ``cpu_linear``'s
    panels than from oneDNN's prepacked layout (see ``kernels/cpu_linear.py``), which is itself 2-4x
    faster than sgemm; past ``cpu_linear.ROW_LIMIT`` rows (prefill) the two are within a few
    percent. bfloat16 runs on the CPU's BF16 instructions in both."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    onednn = None
    if torch.backends.mkldnn.is_available():
        onednn = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_BATCH_HINT)
    panels = cpu_linear.pack(weight)
    return None if panels is None and onednn is None else PackedWeight(panels, onednn)


PACK_BATCH_HINT = 64  # rows oneDNN tunes the packed layout for; any number of rows works


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: PackedWeight | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through ``packed`` (``pack_weight(weight)``) for a 2-D ``x`` when given."""
    if packed is not None and x.dim() == 2:
        if packed.panels is not None and cpu_linear.usable(x, packed.panels):
            return cpu_linear.linear(x, packed.panels, bias)
        if packed.onednn is not None:  # the overload itself: the packet's lookup costs 6 us a call
            return torch.ops.mkldnn._linear_pointwise.default(x, packed.onednn, bias, "none", [], "")
    return F.linear(x, weight, bias)


def empty_parameter(*shape: int) -> nn.Parameter:
    # Weights come from the checkpoint: skip random initialisation.
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


@dataclass(frozen=True)
class Piece:
    """This rank's share of one checkpoint tensor along its split dimension."""

    full: int  # the checkpoint tensor's size along the split dimension
    start: int  # first index this rank reads
    length: int  # how many it reads
    rows: int  # how many the parameter holds (> length: zero padding)

    @classmethod
    def whole(cls, size: int) -> "Piece":
        return cls(size, 0, size, size)

    @property
    def index(self) -> slice:
        return slice(self.start, self.start + self.length)


@dataclass(frozen=True)
class Placement:
    """Where one checkpoint tensor's slice goes: ``param[offset:offset + n]`` <- ``tensor[index]``."""

    offset: int
    index: tuple[slice, ...]
    full_shape: tuple[int, ...]


def even_piece(total: int, group) -> Piece:
    """An even split of ``total`` (the caller checked that it divides)."""
    per = total // group.size
    return Piece(total, group.rank * per, per, per)


def padded_piece(total: int, group) -> Piece:
    """A split of ``total`` into equal shares, the last ones padded (the vocabulary)."""
    per = -(-total // group.size)
    start = min(group.rank * per, total)
    return Piece(total, start, min(per, total - start), per)


def heads_per_rank(num_heads: int, size: int) -> int:
    """An even split, or one replicated head when there are fewer heads than ranks."""
    return max(1, num_heads // size)


def head_piece(num_heads: int, head_dim: int, group) -> Piece:
    """This rank's heads (see ``heads_per_rank``)."""
    local = heads_per_rank(num_heads, group.size)
    first = group.rank * num_heads // group.size
    return Piece(num_heads * head_dim, first * head_dim, local * head_dim, local * head_dim)


class ColumnParallelLinear(nn.Module):
    """``y = x W^T + b`` for this rank's output rows; ``pieces`` are the fused checkpoint tensors' shares."""

    def __init__(self, in_features: int, pieces: list[Piece], bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.pieces = pieces
        out = sum(p.rows for p in pieces)
        padded = any(p.rows > p.length for p in pieces)
        self.weight = nn.Parameter(torch.zeros(out, in_features), requires_grad=False) if padded else empty_parameter(out, in_features)
        self.bias = empty_parameter(out) if bias else None
        self.packed: PackedWeight | None = None

    def pack(self) -> None:
        """Prepack the loaded weight for the CPU (see ``pack_weight``)."""
        self.packed = pack_weight(self.weight)

    @property
    def output_sizes(self) -> list[int]:
        return [p.rows for p in self.pieces]

    def placement(self, leaf: str, shard: int | None) -> Placement:
        piece = self.pieces[shard or 0]
        offset = sum(p.rows for p in self.pieces[: shard or 0])
        if leaf == "bias":
            return Placement(offset, (piece.index,), (piece.full,))
        return Placement(offset, (piece.index, slice(None)), (piece.full, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)


class RowParallelLinear(nn.Module):
    """``y = sum over ranks of x_r W_r^T, + b``: this rank holds the columns of its input share."""

    def __init__(self, in_piece: Piece, out_features: int, group, bias: bool = False):
        super().__init__()
        self.in_piece = in_piece
        self.out_features = out_features
        self.group = group
        self.weight = empty_parameter(out_features, in_piece.rows)
        self.bias = empty_parameter(out_features) if bias else None
        self.packed: PackedWeight | None = None

    def pack(self) -> None:
        """Prepack the loaded weight for the CPU (see ``pack_weight``)."""
        self.packed = pack_weight(self.weight)

    def placement(self, leaf: str, shard: int | None) -> Placement:
        if leaf == "bias":
            return Placement(0, (slice(None),), (self.out_features,))
        return Placement(0, (slice(None), self.in_piece.index), (self.out_features, self.in_piece.full))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return linear(x, self.weight, self.bias, self.packed)
        y = self.group.all_reduce(linear(x, self.weight, packed=self.packed).contiguous())
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int, group):
        super().__init__()
        self.piece = padded_piece(vocab_size, group)
        self.dim = dim
        self.group = group
        padded = self.piece.rows > self.piece.length
        rows = self.piece.rows
        self.weight = nn.Parameter(torch.zeros(rows, dim), requires_grad=False) if padded else empty_parameter(rows, dim)

    def placement(self, leaf: str, shard: int | None) -> Placement:
        return Placement(0, (self.piece.index, slice(None)), (self.piece.full, self.dim))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.piece.start
        outside = (local < 0) | (local >= self.piece.length)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(x.masked_fill_(outside.unsqueeze(-1), 0))


def replicated_placement(shape: tuple[int, ...]) -> Placement:
    return Placement(0, tuple(slice(None) for _ in shape), tuple(shape))
