"""The offline API, with vLLM's conventions: ``LLM(model_dir).generate(prompts, params)`` and ``.chat(messages)``."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from bare_engine.config import EngineConfig
from bare_engine.engine.llm_engine import LLMEngine
from bare_engine.errors import InvalidRequestError
from bare_engine.model.generation_defaults import default_sampling_params
from bare_engine.model.source import ModelSpec, resolve_model_source
from bare_engine.outputs import RequestOutput
from bare_engine.engine.prompts import Prompt, conversations, normalize_prompts, render_chat
from bare_engine.sampling_params import SamplingParams


class LLM:
    def __init__(
        self,
        model: str | Path | ModelSpec,
        config: EngineConfig | None = None,
        generation_config: str | None = "auto",
        **engine_config,
    ):
        """Either pass an ``EngineConfig`` or its fields as keyword arguments.

        generation_config: "auto" takes the sampling defaults of requests without
        SamplingParams from the checkpoint's generation_config.json (as vLLM does);
        "vllm" or None keeps SamplingParams' own defaults.
        """
        self._default_params = default_sampling_params(resolve_model_source(model).weights_dir, generation_config)
        self.engine = LLMEngine(model, config or EngineConfig(**engine_config))
        self._next_id = 0

    def shutdown(self) -> None:
        """Stop the engine's tensor-parallel workers, if any (``with LLM(...) as llm:`` does it on exit)."""
        self.engine.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def get_default_sampling_params(self) -> SamplingParams:
        """What a request without SamplingParams is sampled with."""
        return self._default_params

    def get_tokenizer(self):
        return self.engine.tokenizer()

    def generate(
        self,
        prompts,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in the order of the prompts.

        prompts: a string, a list of token ids, a ``{"prompt": str}`` / ``{"prompt_token_ids": [...]}``
        dict, or a list mixing these (see bare_engine.engine.prompts).
        """
        return self._run(normalize_prompts(prompts), sampling_params, use_tqdm)

    def chat(
        self,
        messages,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """Generate the next turn of one conversation (a list of {"role", "content"} messages) or of each
        of a list of conversations, rendered with the tokenizer's chat template or ``chat_template``."""
        tokenizer = self.get_tokenizer()
        prompts = []
        for conv in conversations(messages):
            text, ids = render_chat(tokenizer, conv, chat_template, add_generation_prompt, continue_final_message,
                                    chat_template_kwargs)
            prompts.append(Prompt(ids, text))
        return self._run(prompts, sampling_params, use_tqdm)

    def _run(self, prompts: list[Prompt], sampling_params, use_tqdm: bool) -> list[RequestOutput]:
        params = sampling_params or self._default_params
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                request_id = str(self._next_id)
                self._next_id += 1
                self.engine.add_request(request_id, prompt.engine_input, p)
                ids.append(request_id)
        except Exception:
            for request_id in ids:  # a bad prompt rejects the whole call
                self.engine.abort_request(request_id)
            raise
        done: dict[str, RequestOutput] = {}
        try:
            with tqdm(total=len(ids), desc="generate", disable=not use_tqdm, unit="req") as bar:
                while self.engine.has_unfinished_requests():
                    for out in self.engine.step():
                        done[out.request_id] = out
                        bar.update(1)
        except BaseException:  # (Ctrl-C included) nothing of this call may run in the next one
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise
        outputs = [done[i] for i in ids]
        for out, prompt in zip(outputs, prompts):
            out.prompt = prompt.text
        return outputs
