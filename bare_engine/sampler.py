"""The engine side of sampling: per-sequence parameters in, one token per sequence out.

The maths lives in ``kernels/sampling.py`` (Triton) and ``kernels/sampling_ref.py``
(torch, same semantics). ``backend="auto"`` uses Triton on CUDA and the torch
reference elsewhere: Triton's CPU interpreter runs the kernels (the tests force it
with ``backend="triton"``) but is far too slow for a generation loop. This module packs the batch's parameters into tensors and
keeps each model's penalty statistics on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bare_engine.attention import triton_usable
from bare_engine.errors import ConfigError
from bare_engine.sequence import Sequence


@dataclass
class Sampled:
    token_id: int
    logprobs: dict[int, float] | None = None  # chosen token and the top-n, when asked


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
        self.free_rows = list(range(max_rows))

    @property
    def impl(self):
        """The sampling kernels' module, imported on first use (greedy-only runs never need it)."""
        if self._impl is None:
            if self.use_triton:
                from bare_engine.kernels import sampling as impl
            else:
                from bare_engine.kernels import sampling_ref as impl
            self._impl = impl
        return self._impl

    def release(self, seq: Sequence) -> None:
        if seq.sampler_row is not None:
            self.free_rows.append(seq.sampler_row)
            seq.sampler_row = None

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[Sampled]:
        if self._plain_greedy(seqs):
            return [Sampled(t) for t in logits.argmax(dim=-1).tolist()]
        if self.penalties is None and any(s.params.uses_penalties for s in seqs):
            self.penalties = self.impl.PenaltyState(self.max_rows, self.vocab_size, self.device)
        params = self._pack(seqs)
        num_logprobs = max((s.params.logprobs for s in seqs if s.params.logprobs is not None), default=None)
        # SamplingParams were validated when the request arrived; skip the kernel's host-syncing check.
        result = self.impl.sample(logits, params, self.penalties, num_logprobs, validate=False)
        if self.penalties is not None:
            self.penalties.add_tokens(params.penalty_rows, result.token_ids)
        return self._unpack(result, seqs)

    def _plain_greedy(self, seqs: list[Sequence]) -> bool:
        # argmax needs none of the machinery; once penalty state exists every row must be tracked.
        return self.penalties is None and all(
            s.params.greedy
            and not s.params.uses_penalties
            and s.params.logprobs is None
            and s.params.logit_bias is None
            and s.params.allowed_token_ids is None
            and s.trie is None
            for s in seqs
        )

    def _pack(self, seqs: list[Sequence]):
        dev = self.device

        def column(values, dtype):
            return torch.tensor(values, dtype=dtype, device=dev)

        p = [s.params for s in seqs]
        return self.impl.SamplingTensors(
            temperature=column([x.temperature for x in p], torch.float32),
            top_k=column([x.top_k for x in p], torch.int32),
            top_p=column([x.top_p for x in p], torch.float32),
            min_p=column([x.min_p for x in p], torch.float32),
            repetition_penalty=column([x.repetition_penalty for x in p], torch.float32),
            presence_penalty=column([x.presence_penalty for x in p], torch.float32),
            frequency_penalty=column([x.frequency_penalty for x in p], torch.float32),
            seed=column([s.seed for s in seqs], torch.int64),
            position=column([s.num_output_tokens for s in seqs], torch.int64),
            penalty_rows=self._penalty_rows(seqs) if self.penalties is not None else None,
            logit_bias=self._logit_bias(seqs),
            allowed_mask=self._allowed_mask(seqs),
        )

    def _penalty_rows(self, seqs: list[Sequence]) -> torch.Tensor:
        for seq in seqs:
            if seq.sampler_row is None:
                seq.sampler_row = self.free_rows.pop()
                prompt = torch.tensor(seq.token_ids[: seq.num_prompt_tokens], dtype=torch.int64, device=self.device)
                output = torch.tensor(seq.output_token_ids, dtype=torch.int64, device=self.device)
                self.penalties.reset_row(seq.sampler_row, prompt, output)
        return torch.tensor([s.sampler_row for s in seqs], dtype=torch.int64, device=self.device)

    def _logit_bias(self, seqs: list[Sequence]) -> torch.Tensor | None:
        if all(s.params.logit_bias is None for s in seqs):
            return None
        bias = torch.zeros(len(seqs), self.vocab_size, dtype=torch.float32)
        for row, seq in enumerate(seqs):
            for token, value in (seq.params.logit_bias or {}).items():
                bias[row, token] = value
        return bias.to(self.device)

    def _allowed_mask(self, seqs: list[Sequence]) -> torch.Tensor | None:
        if all(s.params.allowed_token_ids is None and s.trie is None for s in seqs):
            return None
        mask = torch.ones(len(seqs), self.vocab_size, dtype=torch.bool)
        for row, seq in enumerate(seqs):
            if seq.params.allowed_token_ids is not None:
                allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
                allowed[seq.params.allowed_token_ids] = True
                mask[row] &= allowed
            if seq.trie is not None:
                allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
                allowed[seq.trie.allowed(seq.output_token_ids)] = True
                mask[row] &= allowed
        return mask.to(self.device)

    @staticmethod
    def _unpack(result, seqs: list[Sequence]) -> list[Sampled]:
        tokens = result.token_ids.tolist()
        if result.logprobs is None:
            return [Sampled(t) for t in tokens]
        chosen = result.logprobs.tolist()
        top_ids = result.top_ids.tolist() if result.top_ids is not None else [[] for _ in seqs]
        top_lps = result.top_logprobs.tolist() if result.top_logprobs is not None else [[] for _ in seqs]
        out = []
        for row, seq in enumerate(seqs):
            if seq.params.logprobs is None:
                out.append(Sampled(tokens[row]))
                continue
            n = seq.params.logprobs
            entry = {t: lp for t, lp in zip(top_ids[row][:n], top_lps[row][:n]) if t >= 0}  # -1 pads short rows
            entry[tokens[row]] = chosen[row]
            out.append(Sampled(tokens[row], entry))
        return out
