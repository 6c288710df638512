"""``echo`` on /v1/completions (lm-eval's loglikelihood requests): the prompt comes back in front of the
completion, and with ``logprobs`` the prompt's tokens carry logprobs too (None for the first token).
``max_tokens: 0`` (echo only) generates one token and drops it."""

from __future__ import annotations

from bare_engine.outputs import CompletionOutput, RequestOutput
from bare_engine.serve import responses


def max_tokens_to_run(body) -> tuple[int | None, bool]:
    """The max_tokens to run and whether the completion is dropped (echo with max_tokens 0)."""
    if body.echo and body.max_tokens == 0:
        return 1, True
    return body.max_tokens, False


def drop_completion(output: RequestOutput) -> None:
    """Echo with max_tokens 0: nothing was asked beyond the prompt."""
    for c in output.outputs:
        c.token_ids, c.text, c.finish_reason, c.stop_reason = [], "", "length", None
        if c.logprobs is not None:
            c.logprobs = []


def echo_choice(tokenizer, prompt: str | list[int], output: RequestOutput, c: CompletionOutput,
                with_logprobs: bool) -> tuple[str, dict | None]:
    """The choice's text (prompt + completion) and its logprobs over the prompt and completion tokens."""
    prompt_text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
    if not with_logprobs:
        return prompt_text + c.text, None
    prompt_part = CompletionOutput(index=c.index, token_ids=output.prompt_token_ids, text=prompt_text,
                                   finish_reason="length", logprobs=[e or {} for e in output.prompt_logprobs or []])
    head = responses.completion_logprobs(tokenizer, prompt_part)
    head["token_logprobs"][0], head["top_logprobs"][0] = None, None  # nothing predicts the first token
    tail = responses.completion_logprobs(tokenizer, c)
    shift = sum(len(t) for t in head["tokens"])
    return prompt_text + c.text, {
        "tokens": head["tokens"] + tail["tokens"],
        "token_logprobs": head["token_logprobs"] + tail["token_logprobs"],
        "top_logprobs": head["top_logprobs"] + tail["top_logprobs"],
        "text_offset": head["text_offset"] + [shift + o for o in tail["text_offset"]],
    }
