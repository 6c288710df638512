"""The offline API: ``LLM(model_dir).generate(prompts, params)``."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from bare_engine.config import EngineConfig
from bare_engine.engine import LLMEngine
from bare_engine.errors import InvalidRequestError
from bare_engine.lora import ModelSpec
from bare_engine.outputs import RequestOutput
from bare_engine.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str | Path | ModelSpec, config: EngineConfig | None = None, **engine_config):
        """Either pass an ``EngineConfig`` or its fields as keyword arguments."""
        self.engine = LLMEngine(model, config or EngineConfig(**engine_config))
        self._next_id = 0

    def generate(
        self,
        prompts: str | list[str] | list[int] | list[list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in the order of the prompts."""
        prompts = _as_prompt_list(prompts)
        params = sampling_params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        ids = []
        for prompt, p in zip(prompts, params):
            request_id = str(self._next_id)
            self._next_id += 1
            self.engine.add_request(request_id, prompt, p)
            ids.append(request_id)
        done: dict[str, RequestOutput] = {}
        with tqdm(total=len(ids), desc="generate", disable=not use_tqdm, unit="req") as bar:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    done[out.request_id] = out
                    bar.update(1)
        return [done[i] for i in ids]


def _as_prompt_list(prompts) -> list:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not isinstance(prompts, list) or not prompts:
        raise InvalidRequestError("prompts must be a non-empty string, list of strings or list of token-id lists")
    return prompts
