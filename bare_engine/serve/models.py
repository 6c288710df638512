"""A served model as the HTTP side sees it: name, context length and its own tokenizer copy.

The copy keeps the asyncio thread's stream detokenization off the tokenizer object the
engine loop thread uses. Prompts are tokenized on a thread of the model's own (with a third
copy), so a long prompt never holds up the event loop: /health and other requests go on.
"""

from __future__ import annotations

import asyncio
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bare_engine.model.generation_defaults import generation_overrides
from bare_engine.serve import engine_view
from bare_engine.serve.protocol import APIError, bad_request


@dataclass
class ServedModel:
    name: str
    tokenizer: object
    max_model_len: int
    sampling_defaults: dict = field(default_factory=dict)  # SamplingParams fields from generation_config.json
    created: int = field(default_factory=lambda: int(time.time()))
    encoder: object = field(default=None, repr=False)  # the tokenizer thread's copy (default: a deep copy)
    _pool: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.encoder is None:
            self.encoder = copy.deepcopy(self.tokenizer)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"bare-engine-tokenize-{self.name}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn, *args):
        """``fn(*args)`` on the model's tokenizer thread (one at a time: the tokenizer is not shared)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @classmethod
    def from_engine(cls, engine, name: str, generation_config: str | None = "auto") -> "ServedModel":
        """``generation_config``: "auto" takes unset sampling fields from the checkpoint's
        generation_config.json, as vLLM's server does; "vllm" keeps SamplingParams' defaults."""
        defaults = generation_overrides(engine_view.weights_dir(engine, name), generation_config)
        return cls(name, copy.deepcopy(engine.tokenizer(name)), engine_view.max_model_len(engine, name), defaults)

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "bare-engine",
                "root": self.name, "max_model_len": self.max_model_len}

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a completions prompt, tokenized as the engine tokenizes a string prompt."""
        return list(prompt) if isinstance(prompt, list) else list(self.encoder(prompt).input_ids)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        if not getattr(self.encoder, "chat_template", None):
            raise bad_request(f"model {self.name!r} has no chat template; use /v1/completions", param="model")
        try:
            text = self.encoder.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # the template rejects these messages (jinja raise_exception, ...)
            raise bad_request(f"the chat template rejected the messages: {exc}", param="messages") from None
        # The rendered text already holds whatever special tokens the template wants.
        return list(self.encoder(text, add_special_tokens=False).input_ids)

    def check_length(self, num_prompt_tokens: int, max_tokens: int | None) -> None:
        limit = self.max_model_len
        if num_prompt_tokens >= limit or (max_tokens is not None and num_prompt_tokens + max_tokens > limit):
            asked = num_prompt_tokens + (max_tokens or 1)
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested {asked} tokens "
                f"({num_prompt_tokens} in the prompt, {max_tokens or 1} for the completion).",
                param="max_tokens" if num_prompt_tokens < limit else "prompt", code="context_length_exceeded",
            )
