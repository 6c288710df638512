"""The engine side of sampling: per-row parameters in, one token per sequence out.

The maths lives in ``kernels/sampling.py`` (Triton) and ``kernels/sampling_ref.py``
(torch, same semantics). ``backend="auto"`` uses Triton on CUDA and the torch
reference elsewhere (on the CPU with its random draw in native code when a C compiler builds
``kernels/cpu_sampling.c``, and top-k rows' thresholds from ``torch.topk``:
``kernels/sampling_cpu.py``, the same tokens): Triton's CPU
interpreter runs the kernels (the tests force it with ``backend="triton"``) but is far too
slow for a generation loop.

Per-request parameters live in two preallocated tables, one row per InputBatch row (float32
and int64, one column per parameter), written once when a sequence takes a row; a step gathers
the batch's rows with one numpy index per table. A new per-row parameter is one more entry of
``FLOAT_COLUMNS`` or ``INT_COLUMNS``. The penalty statistics are kept on the device, one slot per row.

A request whose parameters cannot be packed (add_row), or whose logit bias, allowed tokens or
penalty state fail to build, gets ``seq.error``: its row samples with neutral parameters, the
engine finishes it with finish_reason "error", and the other rows are untouched.

``sample`` returns a ``DeviceSample``: the tokens stay on the device (an overlapped next
step reads them there, see engine/steps.py) while their copy to the host is under way, and
``to_host`` waits for it. Parameters reach the device through pinned, non-blocking copies,
so sampling queues behind the forward pass instead of waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bare_engine.model.layers.attention import triton_usable
from bare_engine.errors import ConfigError
from bare_engine.sample.logits_processors import apply_logits_processors
from bare_engine.sample.sampling_steps import sample_with_steps
from bare_engine.engine.sequence import Sequence
from bare_engine.sample.min_tokens import restrict_min_tokens
from bare_engine.structured.bitmask import GrammarBatch

# Per-row sampling parameters: name -> its value for a sequence. Each group is one table on the host
# and travels to the device as one array. The last int column, the prompt length, becomes the
# sampled token's position (length - prompt length) in the step's gathered copy.
FLOAT_COLUMNS = {
    "temperature": lambda s: s.params.temperature,
    "top_p": lambda s: s.params.top_p,
    "min_p": lambda s: s.params.min_p,
    "repetition_penalty": lambda s: s.params.repetition_penalty,
    "presence_penalty": lambda s: s.params.presence_penalty,
    "frequency_penalty": lambda s: s.params.frequency_penalty,
}
INT_COLUMNS = {
    "top_k": lambda s: s.params.top_k,
    "seed": lambda s: s.seed,
    "position": lambda s: s.num_prompt_tokens,
}
NEUTRAL_FLOATS = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # greedy, no filters, no penalties: a failed row's parameters


def needs_full_sampler(seq: Sequence) -> bool:
    """False for rows a plain argmax serves (greedy, nothing else asked)."""
    p = seq.params
    return not (
        p.greedy and not p.uses_penalties and p.logprobs is None and p.logit_bias is None
        and p.allowed_token_ids is None and seq.trie is None and seq.grammar is None and not p.min_tokens
    )


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None] | None = None  # per row: chosen token and the top-n, when asked


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without waiting for the work queued there (a pageable copy would)."""
    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class DeviceSample:
    """One step's sampled tokens (and logprobs) on the device, with their copy to the host under way."""

    def __init__(self, num_top: np.ndarray, token_ids: torch.Tensor, logprobs=None, top_ids=None, top_logprobs=None):
        self.token_ids = token_ids  # [rows] int64 on the device
        self.num_top = num_top  # per row: top logprobs asked (-1: none), as it was at sampling time
        tensors = (token_ids, logprobs, top_ids, top_logprobs)
        # From the device, a non-blocking copy lands in pinned memory; on the CPU it is the tensor itself.
        self._host = [None if t is None else t.to("cpu", non_blocking=True) for t in tensors]
        self._copied = None
        if token_ids.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()

    def to_host(self) -> SamplerOutput:
        """Wait for the copy; the tokens (and logprobs) as Python values."""
        if self._copied is not None:
            self._copied.synchronize()
        token_ids, chosen, top_ids, top_lps = self._host
        tokens = token_ids.tolist()
        if chosen is None:
            return SamplerOutput(tokens)
        chosen = chosen.tolist()
        padded = top_ids is not None and bool((top_ids < 0).any())  # -1 pads rows with fewer candidates
        width = 0 if top_ids is None else top_ids.shape[1]
        top_ids = top_ids.tolist() if top_ids is not None else None
        top_lps = top_lps.tolist() if top_lps is not None else None
        out: list[dict[int, float] | None] = []
        for i, n in enumerate(self.num_top.tolist()):
            if n < 0:
                out.append(None)
                continue
            entry = {}
            if n > 0:
                ids, lps = (top_ids[i], top_lps[i]) if n == width else (top_ids[i][:n], top_lps[i][:n])
                entry = {t: lp for t, lp in zip(ids, lps) if t >= 0} if padded else dict(zip(ids, lps))
            entry[tokens[i]] = chosen[i]
            out.append(entry)
        return SamplerOutput(tokens, out)


class Sampler:
    def __init__(self, vocab_size: int, max_rows: int, device: torch.device, backend: str = "auto"):
        if backend == "triton" and not triton_usable(device):
            raise ConfigError(f"sampler backend 'triton' needs CUDA or TRITON_INTERPRET=1; device is {device}")
        self.use_triton = backend == "triton" or (backend == "auto" and device.type == "cuda" and triton_usable(device))
        self._impl = None
        self.vocab_size = vocab_size
        self.max_rows = max_rows
        self.device = device
        self.penalties = None  # PenaltyState, created when the first request needs penalties
        self.floats = np.zeros((len(FLOAT_COLUMNS), max_rows), np.float32)  # [column, row]
        self.ints = np.zeros((len(INT_COLUMNS), max_rows), np.int64)
        self.num_logprobs = np.full(max_rows, -1, np.int64)  # -1: no logprobs
        self.full = np.zeros(max_rows, bool)  # row needs more than argmax
        self.uses_penalties = np.zeros(max_rows, bool)
        self.penalty_ready = np.zeros(max_rows, bool)  # the row's PenaltyState slot holds this sequence
        self.has_processors = np.zeros(max_rows, bool)  # logits processors (logits_processors.py)
        self.has_steps = np.zeros(max_rows, bool)  # sampling steps on a sampled row (sampling_steps.py)
        self.has_bias = np.zeros(max_rows, bool)  # logit_bias
        self.has_mask = np.zeros(max_rows, bool)  # allowed_token_ids, allowed_token_sequences, grammar, min_tokens
        self.grammar_batch = GrammarBatch(vocab_size)  # the grammar rows' masks (structured outputs)

    @property
    def impl(self):
        """The sampling kernels' module, imported on first use (greedy-only runs never need it)."""
        if self._impl is None:
            if self.use_triton:
                from bare_engine.kernels import sampling as impl
            else:
                from bare_engine.kernels import sampling_cpu, sampling_ref

                native = self.device.type == "cpu" and sampling_cpu.available()
                impl = sampling_cpu if native else sampling_ref
            self._impl = impl
        return self._impl

    def column(self, name: str) -> np.ndarray:
        """The per-row values of one parameter (a view of its table; "position" holds the prompt length)."""
        if name in FLOAT_COLUMNS:
            return self.floats[list(FLOAT_COLUMNS).index(name)]
        return self.ints[list(INT_COLUMNS).index(name)]

    def add_row(self, row: int, seq: Sequence) -> None:
        """A sequence took ``row``: write its parameters (a value they cannot hold fails only ``seq``)."""
        try:
            self._write_row(row, seq)
        except Exception as exc:  # SamplingParams changed after intake, or a bug: this request's failure
            seq.error = f"sampling parameters cannot be packed: {type(exc).__name__}: {exc}"
            self.floats[:, row] = NEUTRAL_FLOATS
            self.ints[:, row] = (0, 0, seq.num_prompt_tokens)
            self.num_logprobs[row] = -1
            for flags in (self.full, self.uses_penalties, self.has_processors, self.has_steps, self.has_bias,
                          self.has_mask):
                flags[row] = False

    def _write_row(self, row: int, seq: Sequence) -> None:
        # Values were range-checked at intake (SamplingParams.validate); an int past int64 or a non-number
        # still raises here, before anything of the row is written.
        floats = [value(seq) for value in FLOAT_COLUMNS.values()]
        ints = np.array([value(seq) for value in INT_COLUMNS.values()], np.int64)
        self.floats[:, row] = floats
        self.ints[:, row] = ints
        self.num_logprobs[row] = -1 if seq.params.logprobs is None else seq.params.logprobs
        self.full[row] = needs_full_sampler(seq)
        self.uses_penalties[row] = seq.params.uses_penalties
        self.penalty_ready[row] = False
        self.has_processors[row] = bool(seq.params.logits_processors)
        self.has_steps[row] = bool(seq.params.sampling_steps) and not seq.params.greedy
        self.has_bias[row] = seq.params.logit_bias is not None
        self.has_mask[row] = (seq.params.allowed_token_ids is not None or seq.trie is not None
                              or seq.grammar is not None or seq.params.min_tokens > 0)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence], rows: np.ndarray, lens: np.ndarray) -> DeviceSample:
        """Sample the next token of each sequence; ``rows`` are their rows, ``lens`` their lengths.

        Logits processors run first on their rows; a failing one sets ``seq.error`` (the engine
        finishes that sequence). Rows with sampling steps get them inside the same seeded draw.
        """
        if self.has_processors[rows].any():
            logits, errors = apply_logits_processors(logits.contiguous(), seqs, np.flatnonzero(self.has_processors[rows]))
            for i, message in errors.items():
                seqs[i].error = message
        num_top = self.num_logprobs[rows]
        if self.penalties is None and not self.full[rows].any():
            return DeviceSample(num_top, logits.argmax(dim=-1))
        logits = logits.contiguous()  # the kernels read rows; a caller may pass a strided view
        if self.penalties is None and self.uses_penalties[rows].any():
            self.penalties = self.impl.PenaltyState(self.max_rows, self.vocab_size, self.device)
        params = self._pack(seqs, rows, lens)
        num_logprobs = int(num_top.max())
        num_logprobs = None if num_logprobs < 0 else num_logprobs
        # SamplingParams were validated when the request arrived; skip the kernel's host-syncing check.
        if self.has_steps[rows].any():
            row_steps = [s.params.sampling_steps if step else None for s, step in zip(seqs, self.has_steps[rows])]
            result = sample_with_steps(self.impl, logits, params, self.penalties, num_logprobs, row_steps,
                                       use_kernel=self.use_triton)
        else:
            result = self.impl.sample(logits, params, self.penalties, num_logprobs, validate=False)
        if self.penalties is not None:
            self.penalties.add_tokens(params.penalty_rows, result.token_ids)
        return DeviceSample(num_top, result.token_ids, result.logprobs, result.top_ids, result.top_logprobs)

    def _pack(self, seqs: list[Sequence], rows: np.ndarray, lens: np.ndarray):
        floats = self.floats[:, rows]  # one gather per table
        ints = self.ints[:, rows]
        ints[-1] = lens - ints[-1]  # prompt length -> the sampled token's position
        f = dict(zip(FLOAT_COLUMNS, to_device(floats, self.device).unbind(0)))
        i = dict(zip(INT_COLUMNS, to_device(ints, self.device).unbind(0)))
        return self.impl.SamplingTensors(
            top_k=i.pop("top_k").to(torch.int32),
            **f, **i,
            penalty_rows=self._penalty_rows(seqs, rows) if self.penalties is not None else None,
            logit_bias=self._logit_bias(seqs) if self.has_bias[rows].any() else None,
            allowed_mask=self._allowed_mask(seqs) if self.has_mask[rows].any() else None,
        )

    def _penalty_rows(self, seqs: list[Sequence], rows: np.ndarray) -> torch.Tensor:
        for i in np.flatnonzero(~self.penalty_ready[rows]):
            seq, row = seqs[i], int(rows[i])
            try:
                prompt = to_device(torch.tensor(seq.token_ids[: seq.num_prompt_tokens], dtype=torch.int64), self.device)
                output = to_device(torch.tensor(seq.output_token_ids, dtype=torch.int64), self.device)
                self.penalties.reset_row(row, prompt, output)
            except Exception as exc:
                fail_row(seq, "penalty state", exc)
                self.penalties.reset_row(row, torch.zeros(0, dtype=torch.int64, device=self.device))
            self.penalty_ready[row] = True
        return to_device(rows, self.device)

    def _logit_bias(self, seqs: list[Sequence]) -> torch.Tensor:
        bias = torch.zeros(len(seqs), self.vocab_size, dtype=torch.float32)
        for row, seq in enumerate(seqs):
            try:
                for token, value in (seq.params.logit_bias or {}).items():
                    bias[row, token] = value
            except Exception as exc:
                fail_row(seq, "logit_bias", exc)
                bias[row] = 0.0
        return to_device(bias, self.device)

    def _allowed_mask(self, seqs: list[Sequence]) -> torch.Tensor:
        mask = torch.ones(len(seqs), self.vocab_size, dtype=torch.bool)
        for row, seq in enumerate(seqs):
            try:
                if seq.params.allowed_token_ids is not None:
                    allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
                    allowed[seq.params.allowed_token_ids] = True
                    mask[row] &= allowed
                if seq.trie is not None:
                    allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
                    allowed[seq.trie.allowed(seq.output_token_ids)] = True
                    mask[row] &= allowed
            except Exception as exc:
                fail_row(seq, "allowed tokens", exc)
                mask[row] = True
        mask = self.grammar_batch.restrict(seqs, mask)
        mask = restrict_min_tokens(seqs, mask)
        return to_device(mask, self.device)


def fail_row(seq: Sequence, what: str, exc: Exception) -> None:
    """``seq`` failed while its row was packed: the engine finishes it with finish_reason "error"."""
    if seq.error is None:
        seq.error = f"{what} failed: {type(exc).__name__}: {exc}"
