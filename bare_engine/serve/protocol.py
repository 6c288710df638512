"""Request bodies of /v1/completions and /v1/chat/completions, as OpenAI and vLLM define them.

Parsing never raises anything but ``APIError``: a client's mistake is a 4xx with OpenAI's error
body, never a 500.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.sampling_params import SamplingParams


def _not_bool(value):
    if isinstance(value, bool):  # JSON's true is not a number (pydantic's lax mode would take it as 1)
        raise ValueError("a number is required, got a boolean")
    return value


Integer = Annotated[int, BeforeValidator(_not_bool)]
Number = Annotated[float, BeforeValidator(_not_bool)]


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields both endpoints share: OpenAI's, then vLLM's extras."""

    model_config = ConfigDict(extra="allow")  # unknown fields are ignored, and logged (serve/structured.py)

    model: StrictStr
    n: Integer = 1
    temperature: Number | None = None
    top_p: Number | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: Integer | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[str, Number] | None = None
    user: str | None = None
    # vLLM extras
    top_k: Integer | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    ignore_eos: bool = False
    stop_token_ids: list[StrictInt] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    min_tokens: Integer = 0
    structured_outputs: dict[str, Any] | None = None  # vLLM's: json, regex, choice, grammar, json_object

    def sampling_params(self, max_tokens: int | None, logprobs: int | None,
                        defaults: dict | None = None, structured=None) -> SamplingParams:
        """``defaults``: the served model's generation_config fields, for what the request leaves unset
        (``max_tokens`` included, when the request gives none)."""
        values = dict(
            n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=self.seed,
        )
        values = dict(defaults or {}) | {k: v for k, v in values.items() if v is not None}  # null: the default
        values.pop("max_tokens", None)
        if max_tokens is None:
            max_tokens = (defaults or {}).get("max_tokens")
        try:
            return SamplingParams(
                **values, max_tokens=max_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids,
                include_stop_str_in_output=self.include_stop_str_in_output, ignore_eos=self.ignore_eos,
                logprobs=logprobs, logit_bias=self._logit_bias(), skip_special_tokens=self.skip_special_tokens,
                min_tokens=self.min_tokens, structured_outputs=structured,
            )
        except InvalidSamplingParamsError as exc:
            raise bad_request(str(exc), param=_named_param(str(exc))) from None

    def _logit_bias(self) -> dict[int, float] | None:
        if self.logit_bias is None:
            return None
        try:
            bias = {int(k): v for k, v in self.logit_bias.items()}
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids, got {list(self.logit_bias)!r}",
                              param="logit_bias") from None
        bad = next((v for v in bias.values() if not -100.0 <= v <= 100.0), None)
        if bad is not None:
            raise bad_request(f"logit_bias values must be in [-100, 100], got {bad}", param="logit_bias")
        return bias

    def check_stream_fields(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream: true", param="stream_options")


class CompletionRequest(_SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: Integer | None = 16
    logprobs: Integer | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: Integer | None = None

    def prompts(self) -> list[str | list[int]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(t, int) for t in prompt):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise bad_request("prompt must not be empty", param="prompt")
        return prompts

    def check_unsupported(self) -> None:
        if self.echo and self.stream:
            raise bad_request("echo with stream is not supported", param="echo")
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("max_tokens 0 is only allowed with echo", param="max_tokens")
        if self.suffix:
            raise bad_request("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request(f"best_of must equal n (got best_of {self.best_of}, n {self.n})", param="best_of")
        if self.stream and self.logprobs is not None:
            raise bad_request("logprobs with stream is not supported", param="logprobs")
        self.check_stream_fields()


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_unless_assistant(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Integer | None = None
    max_completion_tokens: Integer | None = None
    logprobs: bool = False
    top_logprobs: Integer | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    add_generation_prompt: bool = True  # vLLM extra

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def check_unsupported(self) -> None:
        if self.stream and self.logprobs:
            raise bad_request("logprobs with stream is not supported", param="logprobs")
        self.check_stream_fields()


def parse_body(raw: bytes, model_cls: type[BaseModel]):
    """The request body as ``model_cls``; invalid JSON or a bad field is a 400 naming the field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise bad_request(f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    check_json_tree(data)
    try:
        request = model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_of(first["loc"])
        given = f" (got {first['input']!r})" if first["type"] != "missing" else ""
        raise bad_request(f"{param}: {first['msg']}{given}", param=param) from None
    request.check_unsupported()
    return request


MAX_JSON_DEPTH = 64  # far deeper than any request body; deeper ones are refused before validation


def check_json_tree(data) -> None:
    """400 for a body nested deeper than MAX_JSON_DEPTH or holding a string that is not valid Unicode
    (JSON's lone surrogate escapes, e.g. "\\ud800"), naming the field; iterative, so no recursion limit."""
    stack = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels",
                              param=".".join(map(str, path[:3])) or None)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                param = ".".join(map(str, path)) or None
                raise bad_request(f"{param}: not valid Unicode ({exc.reason} at position {exc.start})",
                                  param=param) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, path, depth))
                stack.append((item, (*path, key), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, (*path, i), depth + 1) for i, item in enumerate(value))


def _param_of(loc: tuple) -> str | None:
    """The field path of a pydantic error, up to the first union member tag (``str``, ``list[int]``)."""
    parts = []
    for part in loc:
        if isinstance(part, str) and (part in ("str", "int", "bool", "float") or "[" in part or "-" in part):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def _named_param(message: str) -> str | None:
    """The field an InvalidSamplingParamsError names: '... parameter: top_p must be ...' -> 'top_p'."""
    tail = message.split(": ", 1)[-1]
    name = tail.split(" ", 1)[0]
    return name if name.isidentifier() else None
