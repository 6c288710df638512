"""The prompt forms vLLM users pass, checked and normalised before they reach the engine.

A prompt is a string, a list of token ids, a TextPrompt ``{"prompt": str}`` or a
TokensPrompt ``{"prompt_token_ids": [int, ...]}``; ``LLM.generate`` takes one of these
or a list of them, mixed. A chat is a list of ``{"role", "content"}`` messages, rendered
with the tokenizer's chat template (or one given).
"""

from __future__ import annotations

from dataclasses import dataclass

from bare_engine.errors import InvalidRequestError

PROMPT_KEYS = ("prompt", "prompt_token_ids")


@dataclass(frozen=True)
class Prompt:
    """What the engine gets (text or token ids) and the text RequestOutput reports (None for ids)."""

    engine_input: str | list[int]
    text: str | None


def normalize_prompts(prompts) -> list[Prompt]:
    """One Prompt per request; InvalidRequestError naming what is wrong otherwise."""
    if isinstance(prompts, (str, dict)):
        return [_one(prompts, None)]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidRequestError(
            "prompts must be a string, a list of token ids, a {'prompt': ...} or {'prompt_token_ids': ...} dict, "
            f"or a non-empty list of these; got {_describe(prompts)}"
        )
    if any(_is_token(p) for p in prompts):
        if all(_is_token(p) for p in prompts):
            return [Prompt(list(prompts), None)]
        bad = next(i for i, p in enumerate(prompts) if not _is_token(p))
        raise InvalidRequestError(
            f"prompts list mixes token ids and other items: item {bad} is {_describe(prompts[bad])}; "
            "pass one list of ints, or a list of prompts"
        )
    return [_one(p, i) for i, p in enumerate(prompts)]


def _one(prompt, index: int | None) -> Prompt:
    where = "prompt" if index is None else f"prompt {index}"
    if isinstance(prompt, str):
        return Prompt(prompt, prompt)
    if isinstance(prompt, (list, tuple)):
        return Prompt(token_ids(prompt, where), None)
    if isinstance(prompt, dict):
        unknown = [k for k in prompt if k not in PROMPT_KEYS]
        if unknown:
            raise InvalidRequestError(
                f"{where} has unknown key {unknown[0]!r}; a prompt dict has 'prompt' (text) or 'prompt_token_ids'"
            )
        if len(prompt) != 1:
            raise InvalidRequestError(f"{where} must have exactly one of 'prompt' or 'prompt_token_ids', got {sorted(prompt)}")
        if "prompt" in prompt:
            text = prompt["prompt"]
            if not isinstance(text, str):
                raise InvalidRequestError(f"{where}: 'prompt' must be a string, got {_describe(text)}")
            return Prompt(text, text)
        ids = prompt["prompt_token_ids"]
        if not isinstance(ids, (list, tuple)):
            raise InvalidRequestError(f"{where}: 'prompt_token_ids' must be a list of ints, got {_describe(ids)}")
        return Prompt(token_ids(ids, f"{where} 'prompt_token_ids'"), None)
    raise InvalidRequestError(f"{where} is {_describe(prompt)}; expected a string, a list of token ids or a prompt dict")


def token_ids(ids, where: str) -> list[int]:
    for i, t in enumerate(ids):
        if not _is_token(t):
            raise InvalidRequestError(f"{where}: token {i} is {_describe(t)}, not an integer token id")
    return list(ids)


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def conversations(messages) -> list[list[dict]]:
    """One conversation (a list of messages) or a list of them, as a list of conversations."""
    if isinstance(messages, (list, tuple)) and messages and all(isinstance(m, (list, tuple)) for m in messages):
        convs = [list(c) for c in messages]
    elif isinstance(messages, (list, tuple)) and messages:
        convs = [list(messages)]
    else:
        raise InvalidRequestError(f"messages must be a non-empty list of messages or of conversations, got {_describe(messages)}")
    for c, conv in enumerate(convs):
        if not conv:
            raise InvalidRequestError(f"conversation {c} is empty")
        for m, message in enumerate(conv):
            _check_message(message, f"conversation {c} message {m}")
    return convs


def _check_message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"{where} is {_describe(message)}; a message is a {{'role': ..., 'content': ...}} dict")
    if not isinstance(message.get("role"), str):
        raise InvalidRequestError(f"{where} needs a string 'role', got {_describe(message.get('role'))}")
    if not isinstance(message.get("content"), (str, list)):
        raise InvalidRequestError(f"{where} needs a 'content' string, got {_describe(message.get('content'))}")
    _check_unicode(message["content"], f"{where} content")


def _check_unicode(value, where: str) -> None:
    """InvalidRequestError for text that is not valid Unicode (a lone surrogate), at any depth of ``value``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(f"{where} is not valid Unicode: {exc.reason} at position {exc.start}") from None
    elif isinstance(value, dict):
        for item in value.values():
            _check_unicode(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_unicode(item, where)


def render_chat(tokenizer, messages: list[dict], chat_template: str | None = None,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                chat_template_kwargs: dict | None = None) -> tuple[str, list[int]]:
    """(text, token ids) of a conversation through the chat template; the text already holds its special tokens."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("the model's tokenizer has no chat template; pass chat_template=")
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, **(chat_template_kwargs or {}),
        )
    except Exception as exc:  # jinja2 and transformers raise many types; all mean the template failed
        raise InvalidRequestError(f"chat template failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    _check_unicode(text, "the rendered chat")
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])
