"""Overlapped steps (async scheduling): the host prepares step t+1 while the device runs step t.

Each ``step()``:

1. schedules step t+1 and queues it on the device (``ModelRunner.launch``) before step t's
   sampled tokens are read on the host. Every sequence sampled at t holds a ``PENDING_TOKEN`` in
   its token_ids meanwhile; when it decodes at t+1 its input token is gathered, on the device, from
   step t's sampled tokens (no host sync);
2. reads step t's tokens (waiting for their copy to the host) and processes them as the
   synchronous step does: append, stop checks, detokenization, finished requests;
3. a sequence that finished at t but was already scheduled in t+1 has its t+1 token discarded
   when t+1 is processed; its row and blocks are released in 2 (the device runs the steps in
   order, so a block that a later step reuses is written after t+1 is done with it).

A sequence whose pending token is its last by length (max_tokens, the context) is not scheduled
again; one that ends on EOS or a stop runs one extra step, whose token is discarded (as vLLM does).

Outputs are exactly those of synchronous steps: tokens are drawn by (seed, position), not by
step; penalty statistics live on the device and count each token when it is sampled; the host
state sampling reads otherwise (the penalty reset of a sequence taking a row) excludes pending
tokens, and a sequence only takes a row once its pending tokens are read back.

A step of a model with an unfinished request whose sampling reads its token history on the
host (logits processors, allowed_token_sequences) runs synchronously: the pending step is
processed first, the sequences it finished leave the batch, and the batch runs as in the
synchronous engine. Tensor parallelism (tensor_parallel_size > 1) always runs synchronous steps
(the workers would need the sampled tokens). On the CPU there is nothing to overlap:
``async_scheduling=True`` there runs this same code path, for tests.
"""

from __future__ import annotations

from bare_engine.model_runner import LaunchedStep
from bare_engine.outputs import RequestOutput
from bare_engine.sampling_params import SamplingParams
from bare_engine.scheduler import ScheduledBatch
from bare_engine.sequence import PENDING_TOKEN, SequenceStatus

FINISHED = SequenceStatus.FINISHED


def needs_host_history(params: SamplingParams) -> bool:
    """True when sampling the request reads its generated tokens on the host (no overlapped steps)."""
    return bool(params.logits_processors) or params.allowed_token_sequences is not None


class OverlappedSteps:
    def __init__(self, engine):
        self.engine = engine
        self.pending: LaunchedStep | None = None  # launched, not yet processed
        self.pending_model: str | None = None

    def step(self) -> list[RequestOutput]:
        engine = self.engine
        batch = engine.schedule_batch()
        if batch is None:
            if self.pending is None and engine.requests:
                raise RuntimeError("scheduler made no progress with requests pending (engine bug)")
            return self.drain()
        if batch.model in engine.host_history_models:
            return self._step_synchronously(batch)
        previous = self.pending
        launched = engine.runners[batch.model].launch(batch, previous.device_tokens if previous else None)
        for seq in launched.seqs:
            seq.token_ids.append(PENDING_TOKEN)
            seq.num_pending += 1
        finished = self.drain()
        engine.scheduler.after_step(batch)  # after the drain: prefix-cache hashes must see real tokens
        self.pending, self.pending_model = launched, batch.model
        if not engine.requests:  # the last ones just finished: what is left ran for nothing
            self.drain()
        return finished

    def _step_synchronously(self, batch: ScheduledBatch) -> list[RequestOutput]:
        """Process the pending step, then run ``batch`` without what it finished (scheduled before
        their last token was known) as a synchronous step."""
        finished = self.drain()
        seqs = [(s, n) for s, n in zip(batch.seqs, batch.num_new_tokens) if s.status is not FINISHED]
        if len(seqs) < len(batch.seqs):
            batch = ScheduledBatch(batch.model, [s for s, _ in seqs], [n for _, n in seqs])
        return finished + (self.engine.run_batch(batch) if batch else [])

    def drain(self) -> list[RequestOutput]:
        """Process the pending step, if any; the requests it finished."""
        launched, model = self.pending, self.pending_model
        self.pending = self.pending_model = None
        if launched is None:
            return []
        engine = self.engine
        result = launched.result()
        eos_ids, logprobs = engine.eos_ids[model], result.logprobs
        finished = []
        for i, (seq, token, position) in enumerate(zip(result.seqs, result.token_ids, launched.positions)):
            if seq.status is FINISHED:  # finished (or aborted) while this step ran: the token is not its own
                continue
            seq.token_ids[position] = token
            seq.num_pending -= 1
            if engine.accept_token(seq, token, logprobs[i] if logprobs is not None else None, eos_ids, position + 1):
                del seq.token_ids[position + 1:]  # the next step's pending token, if it was scheduled
                seq.num_pending = 0
                output = engine.finish_sequence(seq)
                if output is not None:
                    finished.append(output)
        return finished
