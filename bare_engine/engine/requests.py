"""The engine's unfinished requests, and which of them read their token history on the host."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bare_engine.engine.sequence import Sequence
from bare_engine.sampling_params import SamplingParams


@dataclass
class Request:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    seqs: list[Sequence]


def needs_host_history(params: SamplingParams) -> bool:
    """True when sampling the request reads its generated tokens on the host (no overlapped steps)."""
    return (bool(params.logits_processors) or params.allowed_token_sequences is not None
            or params.structured_outputs is not None  # the grammar state advances on the host
            or params.prompt_logprobs is not None)  # read back at prefill (worker/prompt_logprobs.py)


class RequestTable:
    def __init__(self):
        self.requests: dict[str, Request] = {}
        # Models with unfinished requests that read their token history on the host -> how many;
        # those models' steps run synchronously (steps.py).
        self.host_history_models: Counter[str] = Counter()
        self._host_history: dict[str, str] = {}

    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request
        if needs_host_history(request.seqs[0].params):
            model = request.seqs[0].model  # the model whose steps run it
            self._host_history[request.request_id] = model
            self.host_history_models[model] += 1

    def pop(self, request_id: str) -> Request | None:
        model = self._host_history.pop(request_id, None)
        if model is not None:
            self.host_history_models[model] -= 1
            if not self.host_history_models[model]:
                del self.host_history_models[model]
        return self.requests.pop(request_id, None)

    def get(self, request_id: str) -> Request | None:
        return self.requests.get(request_id)

    def values(self):
        return self.requests.values()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.requests

    def __bool__(self) -> bool:
        return bool(self.requests)
