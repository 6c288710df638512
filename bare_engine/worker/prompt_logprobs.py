"""Prompt logprobs (SamplingParams.prompt_logprobs), computed from a prefill step's hidden states.

The hidden state at position p gives the distribution of token p+1. A step holding positions
[start, start+n) of a prompt of P tokens gives the entries of tokens start+1 .. min(start+n, P-1);
entries already recorded (a preempted sequence recomputing its prompt) are not recomputed.
"""

from __future__ import annotations

import torch

from bare_engine.engine.scheduler import ScheduledBatch
from bare_engine.engine.sequence import Sequence

ROWS_PER_CHUNK = 256  # logits rows in memory at once: [256, vocab] float32


def prompt_positions(batch: ScheduledBatch) -> list[tuple[Sequence, int, int]]:
    """(sequence, first flat index in the step, number of positions) of each prompt chunk that still
    owes prompt logprobs; the first position predicts the sequence's next missing entry."""
    wanted, offset = [], 0
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        entries = seq.prompt_logprobs
        if entries is not None and len(entries) < seq.num_prompt_tokens:
            start = seq.num_computed_tokens
            first = len(entries) - 1  # position whose logits give the next missing entry
            last = min(start + n, seq.num_prompt_tokens - 1)  # one past the last position to read
            if start <= first < last:
                wanted.append((seq, offset + first - start, last - first))
        offset += n
    return wanted


def add_prompt_logprobs(hidden: torch.Tensor, compute_logits, wanted: list[tuple[Sequence, int, int]]) -> None:
    """Append each wanted chunk's entries to its sequence: {prompt token: logprob, top-k candidates...}."""
    for seq, index, count in wanted:
        top = seq.params.prompt_logprobs
        first_target = len(seq.prompt_logprobs)
        targets = torch.tensor(seq.token_ids[first_target:first_target + count], device=hidden.device)
        for begin in range(0, count, ROWS_PER_CHUNK):
            end = min(begin + ROWS_PER_CHUNK, count)
            logprobs = torch.log_softmax(compute_logits(hidden[index + begin:index + end]).float(), dim=-1)
            chosen = logprobs.gather(1, targets[begin:end, None]).squeeze(1).tolist()
            top_ids = top_lps = None
            if top:
                top_lps, top_ids = (t.tolist() for t in logprobs.topk(top, dim=-1))
            for i, token in enumerate(targets[begin:end].tolist()):
                entry = dict(zip(top_ids[i], top_lps[i])) if top else {}
                entry[token] = chosen[i]
                seq.prompt_logprobs.append(entry)
