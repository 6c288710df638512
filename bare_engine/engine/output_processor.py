"""What a sampled token does to its sequence: append, stop checks, detokenization, finished requests."""

from __future__ import annotations

from bare_engine.engine.requests import Request, RequestTable
from bare_engine.engine.scheduler import Scheduler
from bare_engine.engine.sequence import Sequence
from bare_engine.outputs import CompletionOutput, RequestOutput


class OutputProcessor:
    def __init__(self, scheduler: Scheduler, requests: RequestTable, eos_ids: dict[str, set[int]]):
        self.scheduler = scheduler
        self.requests = requests
        self.eos_ids = eos_ids  # model -> its EOS token ids

    def add_token(self, seq: Sequence, token: int, logprobs: dict[int, float] | None, eos_ids: set[int]) -> bool:
        """Append a sampled token to ``seq``; True when it ends the sequence. A sequence that failed while
        its token was sampled (``seq.error``: packing, a logits processor) ends without it; anything that
        fails here (stop checks, detokenization) fails only ``seq``: finish_reason "error", with the message."""
        if seq.error is not None:  # the token is not its own
            seq.finish_reason = "error"
            return True
        try:  # free unless it raises (Python 3.11)
            tokens = seq.token_ids
            tokens.append(token)
            if logprobs is not None and seq.logprobs is not None:
                seq.logprobs.append(logprobs)
                seq.cumulative_logprob += logprobs[token]
            params = seq.params
            if seq.grammar is not None and not seq.grammar.accept(token):
                raise ValueError("the structured-output grammar does not allow it")
            may_stop = seq.num_output_tokens > params.min_tokens  # min_tokens: no EOS or stop id before
            if may_stop and not params.ignore_eos and token in eos_ids:
                seq.finish_reason = "stop"
            elif seq.grammar is not None and seq.grammar.is_terminated:  # complete, its stop token taken
                seq.finish_reason = "stop"
            elif seq.trie is not None and seq.trie.is_complete(seq.output_token_ids):
                seq.detok.add(token)
                seq.finish_reason = "stop"
            elif may_stop and token in params.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token
            elif (stop := seq.detok.add(token)) is not None:
                seq.finish_reason, seq.stop_reason = "stop", stop
            elif len(tokens) >= seq.max_len:  # max_tokens or the model's context
                seq.finish_reason = "length"
        except Exception as exc:
            seq.error = f"processing output token {token} failed: {type(exc).__name__}: {exc}"
            seq.finish_reason = "error"
        return seq.finish_reason is not None

    def finish(self, seq: Sequence) -> RequestOutput | None:
        """Release a finished sequence; its request's output once all its samples are finished."""
        self.scheduler.finish(seq)
        request = self.requests.get(seq.request_id)
        if all(s.is_finished for s in request.seqs):
            return make_output(self.requests.pop(seq.request_id))
        return None


def make_output(request: Request) -> RequestOutput:
    outputs = []
    for seq in request.seqs:
        # EOS and stop tokens never reach the detokenizer, so they are not part of the text.
        stop = seq.stop_reason if isinstance(seq.stop_reason, str) else None
        try:
            text = seq.detok.final_text(stop, seq.params.include_stop_str_in_output)
        except Exception as exc:  # this sample's detokenizer failed: it alone reports the error
            text, seq.finish_reason = "", "error"
            seq.error = seq.error or f"detokenization failed: {type(exc).__name__}: {exc}"
        outputs.append(
            CompletionOutput(
                index=seq.index,
                token_ids=seq.output_token_ids,
                text=text,
                finish_reason=seq.finish_reason or "abort",
                stop_reason=seq.stop_reason,
                logprobs=seq.logprobs,
                cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
                error=seq.error,
            )
        )
    first = request.seqs[0]
    return RequestOutput(request.request_id, request.model, request.prompt_token_ids, outputs,
                         prompt_logprobs=first.prompt_logprobs, num_cached_tokens=first.num_cached_tokens or 0)
