"""POST /v1/completions and /v1/chat/completions: validate, submit, answer or stream."""

from __future__ import annotations

import time
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from bare_engine.serve import echo, responses
from bare_engine.serve.generation import ClientDisconnected, Generation
from bare_engine.serve.limits import check_prompt_chars, read_body
from bare_engine.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_body
from bare_engine.serve.streaming import SSE_DONE, sse
from bare_engine.serve.structured import chat_structured, from_structured_outputs, log_unknown_fields

CLIENT_CLOSED = 499  # nginx's status for a request whose client went away (never seen by the client)


class AbortingStream(StreamingResponse):
    """A streamed response that aborts its engine requests however it ends (done, disconnect, cancel)."""

    def __init__(self, generation: Generation, content):
        super().__init__(content, media_type="text/event-stream")
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.abort_open()


async def completion(state, request: Request) -> Response:
    body = parse_body(await read_body(request, state.limits.max_body_bytes), CompletionRequest)
    log_unknown_fields(body, state.unknown_fields)
    model = state.model(body.model)
    texts = body.prompts()
    check_prompt_chars([p for p in texts if isinstance(p, str)], state.limits.max_prompt_chars, "prompt")
    prompts = [await model.off_loop(model.encode, p) for p in texts]
    max_tokens, drop = echo.max_tokens_to_run(body)
    params = body.sampling_params(max_tokens, body.logprobs, model.sampling_defaults,
                                  from_structured_outputs(body.structured_outputs))
    if body.echo and body.logprobs is not None:
        params.prompt_logprobs = body.logprobs
    for ids in prompts:
        model.check_length(len(ids), params.max_tokens)
    generation = Generation(state.engine_loop, model, prompts, params, body.stream, "cmpl")
    created = int(time.time())
    chunk = partial(responses.completion_chunk, generation.id, model.name, created)

    def body_of(outputs) -> dict:
        choices = []
        for prompt, out in zip(texts, outputs):
            if drop:
                echo.drop_completion(out)
            for c in out.outputs:
                if body.echo:
                    text, logprobs = echo.echo_choice(model.tokenizer, prompt, out, c, body.logprobs is not None)
                else:
                    text = c.text
                    logprobs = responses.completion_logprobs(model.tokenizer, c) if body.logprobs is not None else None
                choices.append(responses.completion_choice(len(choices), text, c.finish_reason, c.stop_reason,
                                                           logprobs))
        return responses.completion(generation.id, model.name, created, choices, _usage(generation))

    return await _answer(generation, request, lambda first: _completion_stream(generation, first, chunk, body),
                         body_of)


async def _completion_stream(generation: Generation, first, chunk, body):
    try:
        async for d in generation.deltas(first):
            yield sse(chunk([responses.completion_choice(d.index, d.text, d.finish_reason, d.stop_reason)]))
    except APIError as exc:  # after the headers went out, an error is an event of its own
        yield sse(exc.body())
    else:
        if body.stream_options and body.stream_options.include_usage:
            yield sse(chunk([], _usage(generation)))
    yield SSE_DONE


async def chat_completion(state, request: Request) -> Response:
    body = parse_body(await read_body(request, state.limits.max_body_bytes), ChatCompletionRequest)
    log_unknown_fields(body, state.unknown_fields)
    structured, tools = chat_structured(body)
    model = state.model(body.model)
    messages = body.chat_messages()
    check_prompt_chars([m["content"] for m in messages], state.limits.max_prompt_chars, "messages")
    ids = await model.off_loop(model.encode_chat, messages, body.add_generation_prompt)
    num_top = body.num_logprobs()
    params = body.sampling_params(body.max_new_tokens(), num_top, model.sampling_defaults, structured)
    model.check_length(len(ids), params.max_tokens)
    generation = Generation(state.engine_loop, model, [ids], params, body.stream, "chatcmpl")
    created = int(time.time())
    chunk = partial(responses.chat_chunk, generation.id, model.name, created)

    def body_of(outputs) -> dict:
        choices = [
            responses.chat_choice(c.index, c.text, c.finish_reason, c.stop_reason,
                                  responses.chat_logprobs(model.tokenizer, c, num_top) if num_top is not None else None,
                                  tools.tool_calls(c.text) if tools is not None and c.finish_reason == "stop" else None)
            for c in outputs[0].outputs
        ]
        return responses.chat_completion(generation.id, model.name, created, choices, _usage(generation))

    return await _answer(generation, request, lambda first: _chat_stream(generation, first, chunk, body), body_of)


async def _chat_stream(generation: Generation, first, chunk, body):
    yield sse(chunk([responses.chat_delta(i, {"role": "assistant", "content": ""}) for i in range(body.n)]))
    try:
        async for d in generation.deltas(first):
            if d.text:
                yield sse(chunk([responses.chat_delta(d.index, {"content": d.text})]))
            if d.finish_reason is not None:
                yield sse(chunk([responses.chat_delta(d.index, {}, d.finish_reason, d.stop_reason)]))
    except APIError as exc:
        yield sse(exc.body())
    else:
        if body.stream_options and body.stream_options.include_usage:
            yield sse(chunk([], _usage(generation)))
    yield SSE_DONE


async def _answer(generation: Generation, request: Request, stream_from, body_of) -> Response:
    """Submit; then stream (``stream_from(first_event)``) or answer ``body_of(outputs)`` at the end."""
    generation.submit()
    try:
        if generation.stream:
            first = await generation.first_event(request)
            return AbortingStream(generation, stream_from(first))
        outputs = await generation.results(request)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse(body_of(outputs))


def _usage(generation: Generation) -> dict:
    cached = sum(out.num_cached_tokens for out in generation.outputs.values())
    return responses.usage(generation.num_prompt_tokens, generation.num_completion_tokens, cached)
