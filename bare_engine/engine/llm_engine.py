"""The step-wise engine: named models, one scheduler, shared KV pools.

Each ``step()`` runs one forward pass of one model. How a step runs is a strategy (steps.py):
synchronous, or, with ``async_scheduling`` (on by default on CUDA), overlapped: the step is
queued and the previous one processed while the device runs it. The jobs around it each have
their file: set-up (loading.py), KV pools (kv_sizing.py), request intake (intake.py), the
unfinished requests (requests.py) and what sampled tokens do (output_processor.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bare_engine.config import EngineConfig
from bare_engine.engine.intake import RequestIntake
from bare_engine.engine.kv_sizing import allocate_pools
from bare_engine.engine.loading import LoadedModels, load_models
from bare_engine.engine.model_policy import InterleavePolicy
from bare_engine.engine.output_processor import OutputProcessor
from bare_engine.engine.requests import RequestTable
from bare_engine.engine.scheduler import Scheduler
from bare_engine.engine.steps import OverlappedSteps, SynchronousSteps
from bare_engine.errors import InvalidRequestError
from bare_engine.model.source import ModelSpec
from bare_engine.outputs import RequestOutput
from bare_engine.sampling_params import SamplingParams
from bare_engine.worker.model_runner import ModelStats

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(
        self,
        models: str | Path | ModelSpec | dict[str, str | Path | ModelSpec],
        config: EngineConfig | None = None,
        policy=None,
    ):
        self.config = config or EngineConfig()
        loaded = load_models(models, self.config)
        self.loaded: LoadedModels = loaded
        self.tp = loaded.tp
        self.device, self.dtype, self.backend = loaded.device, loaded.dtype, loaded.backend
        self.sources = loaded.sources  # model name -> its weights and tokenizer directories
        self.runners, self.tokenizers, self.eos_ids = loaded.runners, loaded.tokenizers, loaded.eos_ids
        self.max_model_len: dict[str, int] = loaded.max_model_len
        try:
            pools = allocate_pools(self.config, loaded)
        except BaseException:
            self.shutdown()
            raise
        self.scheduler = Scheduler(pools, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        self.scheduler.on_release = lambda seq: self.runners[seq.model].release(seq)
        drain = "instruct" if "instruct" in self.runners else None
        self.policy = policy or InterleavePolicy(drain_model=drain)
        self.requests = RequestTable()
        vocab = {name: r.config.vocab_size for name, r in self.runners.items()}
        self.intake = RequestIntake(self.tokenizers, vocab, self.max_model_len, self.eos_ids, self.config.seed,
                                    loaded.step_model)
        self.outputs = OutputProcessor(self.scheduler, self.requests, self.eos_ids)
        self.steps: SynchronousSteps = self._make_steps(self.config.resolve_async_scheduling(self.device))

    @property
    def model_names(self) -> list[str]:
        return list(self.runners)

    @property
    def stats(self) -> dict[str, ModelStats]:
        return {name: r.stats_for(name) for name, r in self.runners.items()}

    @property
    def tensor_parallel_pids(self) -> list[int]:
        """Process ids of the tensor-parallel workers (ranks 1..N-1)."""
        return self.tp.pids if self.tp else []

    def tokenizer(self, model: str | None = None):
        return self.tokenizers[self._model_name(model)]

    # ----- lifecycle ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (nothing to do at tensor_parallel_size 1); idempotent."""
        if getattr(self, "tp", None) is not None:
            self.tp.shutdown()

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def set_async_scheduling(self, enabled: bool) -> None:
        """Switch overlapped steps on or off between runs (benchmarks compare both on one engine)."""
        if self.has_unfinished_requests():
            raise InvalidRequestError("async_scheduling can only change while no request is unfinished")
        self.steps.drain()  # aborted requests' last step: nothing is left to report
        self.steps = self._make_steps(enabled)

    def _make_steps(self, overlapped: bool) -> SynchronousSteps:
        if overlapped and self.tp is not None:
            logger.info("async_scheduling: tensor_parallel_size > 1 runs synchronous steps")
            overlapped = False
        strategy = OverlappedSteps if overlapped else SynchronousSteps
        return strategy(self.scheduler, self.policy, self.runners, self.requests, self.outputs)

    @property
    def async_scheduling(self) -> bool:
        return isinstance(self.steps, OverlappedSteps)

    # ----- requests -------------------------------------------------------------------------

    def _model_name(self, model: str | None) -> str:
        if model is None:
            if len(self.runners) != 1:
                raise InvalidRequestError(f"several models are loaded ({', '.join(self.runners)}): name one")
            return next(iter(self.runners))
        if model not in self.runners:
            raise InvalidRequestError(f"unknown model {model!r}; loaded: {', '.join(self.runners)}")
        return model

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        model: str | None = None,
    ) -> None:
        """Queue a request; an InvalidRequestError (nothing queued) when anything about it is wrong."""
        model = self._model_name(model)
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        request = self.intake.make_request(request_id, model, prompt, params or SamplingParams())
        for seq in request.seqs:
            self.scheduler.add(seq)
        self.requests.add(request)

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def num_unfinished_requests(self, model: str | None = None) -> int:
        return sum(1 for r in self.requests.values() if model is None or r.model == model)

    # ----- the loop -------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one forward pass of one model; return the requests that finished in it (with overlapped
        steps: in the previous one, processed while this one runs)."""
        return self.steps.step()
