"""Response and stream-chunk bodies, shaped as OpenAI's (and vLLM's) are."""

from __future__ import annotations

from bare_engine.outputs import CompletionOutput
from bare_engine.serve.token_bytes import token_bytes


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    body = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:  # prompt tokens the prefix cache served
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


def completion(response_id: str, model: str, created: int, choices: list[dict], usage_body: dict) -> dict:
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage_body}


def completion_choice(index: int, text: str, finish_reason: str | None, stop_reason=None,
                      logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
            "stop_reason": stop_reason}


def completion_chunk(response_id: str, model: str, created: int, choices: list[dict],
                     usage_body: dict | None = None) -> dict:
    body = {"id": response_id, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage_body is not None:
        body["usage"] = usage_body
    return body


def chat_completion(response_id: str, model: str, created: int, choices: list[dict], usage_body: dict) -> dict:
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage_body}


def chat_choice(index: int, text: str, finish_reason: str, stop_reason=None, logprobs: dict | None = None,
                tool_calls: list[dict] | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if tool_calls:  # the text was the call (serve/structured.py): OpenAI's shape has no content then
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        finish_reason = "tool_calls"
    return {"index": index, "message": message, "logprobs": logprobs,
            "finish_reason": finish_reason, "stop_reason": stop_reason}


def chat_chunk(response_id: str, model: str, created: int, choices: list[dict],
               usage_body: dict | None = None) -> dict:
    body = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices}
    if usage_body is not None:
        body["usage"] = usage_body
    return body


def chat_delta(index: int, delta: dict, finish_reason: str | None = None, stop_reason=None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason,
            "stop_reason": stop_reason}


def completion_logprobs(tokenizer, output: CompletionOutput) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    offset = 0
    for token_id, candidates in zip(output.token_ids, output.logprobs or []):
        text = _token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(candidates.get(token_id))
        top.append({_token_text(tokenizer, t): lp for t, lp in _best(candidates)})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(tokenizer, output: CompletionOutput, num_top: int) -> dict:
    content = []
    for token_id, candidates in zip(output.token_ids, output.logprobs or []):
        text = _token_text(tokenizer, token_id)
        content.append({
            "token": text, "logprob": candidates.get(token_id), "bytes": list(token_bytes(tokenizer, token_id)),
            "top_logprobs": [
                {"token": _token_text(tokenizer, t), "logprob": lp, "bytes": list(token_bytes(tokenizer, t))}
                for t, lp in _best(candidates)[:num_top]
            ],
        })
    return {"content": content}


def _best(candidates: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(candidates.items(), key=lambda kv: -kv[1])


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)
