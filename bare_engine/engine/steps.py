"""How ``LLMEngine.step()`` runs a step: two strategies behind one interface (``step``, ``drain``).

``SynchronousSteps`` schedules a batch, runs it, waits for its tokens and processes them.

``OverlappedSteps`` (async scheduling) lets the host prepare step t+1 while the device runs step t:

1. it schedules step t+1 and queues it on the device (``ModelRunner.launch``) before step t's
   sampled tokens are read on the host. Every sequence sampled at t counts one pending token
   (``seq.num_pending``) meanwhile; when it decodes at t+1 its input token is gathered, on the
   device, from step t's sampled tokens (no host sync);
2. it reads step t's tokens (waiting for their copy to the host) and processes them as the
   synchronous step does: append, stop checks, detokenization, finished requests;
3. a sequence that finished at t but was already scheduled in t+1 has its t+1 token discarded
   when t+1 is processed; its row and blocks are released in 2 (the device runs the steps in
   order, so a block that a later step reuses is written after t+1 is done with it).

A sequence whose pending token is its last by length (max_tokens, the context) is not scheduled
again; one that ends on EOS or a stop runs one extra step, whose token is discarded (as vLLM does).

Outputs are exactly those of synchronous steps: tokens are drawn by (seed, position), not by
step; penalty statistics live on the device and count each token when it is sampled; the host
state sampling reads otherwise (the penalty reset of a sequence taking a row) holds only tokens
read back, and a sequence only takes a row once its pending tokens are read back.

A step of a model with an unfinished request whose sampling reads its token history on the
host (logits processors, allowed_token_sequences) runs synchronously: the pending step is
processed first, the sequences it finished leave the batch, and the batch runs as a
synchronous step. Tensor parallelism (tensor_parallel_size > 1) always runs synchronous steps
(the workers would need the sampled tokens). On the CPU there is nothing to overlap:
``async_scheduling=True`` there runs this same code path, for tests.
"""

from __future__ import annotations

import itertools

from bare_engine.engine.model_policy import InterleavePolicy
from bare_engine.engine.output_processor import OutputProcessor
from bare_engine.engine.requests import RequestTable
from bare_engine.engine.scheduler import ScheduledBatch, Scheduler
from bare_engine.engine.sequence import SequenceStatus
from bare_engine.outputs import RequestOutput
from bare_engine.worker.model_runner import LaunchedStep, ModelRunner

FINISHED = SequenceStatus.FINISHED


class SynchronousSteps:
    def __init__(self, scheduler: Scheduler, policy: InterleavePolicy, runners: dict[str, ModelRunner],
                 requests: RequestTable, outputs: OutputProcessor):
        self.scheduler = scheduler
        self.policy = policy
        self.runners = runners
        self.requests = requests
        self.outputs = outputs

    def step(self) -> list[RequestOutput]:
        batch = self.schedule_batch()
        if batch is None:
            self._check_progress()
            return []
        return self.run_batch(batch)

    def drain(self) -> list[RequestOutput]:
        """Process any step still on the device (none: every step here is processed when it runs)."""
        return []

    def schedule_batch(self) -> ScheduledBatch | None:
        """The next step's batch, of the first model in the policy's order that has one."""
        for model in self.policy.order(self.scheduler):
            batch = self.scheduler.schedule(model)
            if batch:
                self.policy.stepped(model)
                return batch
        return None

    def run_batch(self, batch: ScheduledBatch) -> list[RequestOutput]:
        """Run a scheduled batch, waiting for its tokens, and process them."""
        result = self.runners[batch.model].run(batch)
        self.scheduler.after_step(batch)
        finished = []
        eos_ids, add_token = self.outputs.eos_ids[batch.model], self.outputs.add_token
        logprobs = result.logprobs if result.logprobs is not None else itertools.repeat(None)
        for seq, token, token_logprobs in zip(result.seqs, result.token_ids, logprobs):
            if not add_token(seq, token, token_logprobs, eos_ids):
                continue
            output = self.outputs.finish(seq)
            if output is not None:
                finished.append(output)
        return finished

    def _check_progress(self) -> None:
        if self.requests:
            raise RuntimeError("scheduler made no progress with requests pending (engine bug)")


class OverlappedSteps(SynchronousSteps):
    def __init__(self, *args):
        super().__init__(*args)
        self.pending: LaunchedStep | None = None  # launched, not yet processed
        self.pending_model: str | None = None

    def step(self) -> list[RequestOutput]:
        batch = self.schedule_batch()
        if batch is None:
            if self.pending is None:
                self._check_progress()
            return self.drain()
        if batch.model in self.requests.host_history_models:
            return self._step_synchronously(batch)
        previous = self.pending
        launched = self.runners[batch.model].launch(batch, previous.device_tokens if previous else None)
        for seq in launched.seqs:
            seq.num_pending += 1
        finished = self.drain()
        self.scheduler.after_step(batch)  # after the drain: prefix-cache hashes must see real tokens
        self.pending, self.pending_model = launched, batch.model
        if not self.requests:  # the last ones just finished: what is left ran for nothing
            self.drain()
        return finished

    def _step_synchronously(self, batch: ScheduledBatch) -> list[RequestOutput]:
        """Process the pending step, then run ``batch`` without what it finished (scheduled before
        their last token was known) as a synchronous step."""
        finished = self.drain()
        seqs = [(s, n) for s, n in zip(batch.seqs, batch.num_new_tokens) if s.status is not FINISHED]
        if len(seqs) < len(batch.seqs):
            batch = ScheduledBatch(batch.model, [s for s, _ in seqs], [n for _, n in seqs])
        return finished + (self.run_batch(batch) if batch else [])

    def drain(self) -> list[RequestOutput]:
        """Process the pending step, if any; the requests it finished."""
        launched, model = self.pending, self.pending_model
        self.pending = self.pending_model = None
        if launched is None:
            return []
        result = launched.result()
        eos_ids, logprobs, add_token = self.outputs.eos_ids[model], result.logprobs, self.outputs.add_token
        finished = []
        for i, seq in enumerate(result.seqs):
            if seq.status is FINISHED:  # finished (or aborted) while this step ran: the token is not its own
                continue
            seq.num_pending -= 1
            if add_token(seq, result.token_ids[i], logprobs[i] if logprobs is not None else None, eos_ids):
                seq.num_pending = 0  # the next step's pending token, if it was scheduled, is discarded
                output = self.outputs.finish(seq)
                if output is not None:
                    finished.append(output)
        return finished
