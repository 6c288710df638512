"""Per-request logits processors with vLLM's classic signatures, applied row by row.

A processor is ``fn(output_token_ids, logits) -> logits`` or, when it takes three
parameters, ``fn(prompt_token_ids, output_token_ids, logits) -> logits``: ``logits`` is
the request's raw float32 row ``[vocab]`` (a copy: modifying it in place is fine), the
token ids are lists. Processors run first, before penalties, bias, the allowed mask
and temperature, in the order given; only the rows that have them leave the batched
tensors, so the rest of the batch and every seeded draw are unaffected.

A processor that raises, or returns something other than a tensor of shape
``[vocab]``, fails its own sequence: it finishes with ``finish_reason == "error"`` and
``CompletionOutput.error`` names the processor and what went wrong; the other
sequences of the batch go on. Configs name processors as ``package.module:function``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from bare_engine.errors import ConfigError, InvalidSamplingParamsError

LogitsProcessor = Callable[..., torch.Tensor]


def processor_name(fn) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else qualname


def num_args(fn) -> int:
    """2 or 3: how many positional arguments the processor takes (vLLM's rule: 3 means with prompt)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: assume the short form
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds)


def resolve_processors(items) -> list[LogitsProcessor]:
    """Callables as they are, ``module:function`` strings imported; InvalidSamplingParamsError otherwise."""
    from bare_engine.utils.user_code import import_object

    if not isinstance(items, (list, tuple)):
        raise InvalidSamplingParamsError(f"invalid sampling parameter: logits_processors must be a list, got {items!r}")
    resolved = []
    for item in items:
        if isinstance(item, str):
            try:
                item = import_object(item, "logits processor")
            except ConfigError as exc:
                raise InvalidSamplingParamsError(f"invalid sampling parameter: {exc}") from None
        if not callable(item):
            raise InvalidSamplingParamsError(f"invalid sampling parameter: logits processor {item!r} is not callable")
        if num_args(item) not in (2, 3):
            raise InvalidSamplingParamsError(
                f"invalid sampling parameter: logits processor {processor_name(item)} takes {num_args(item)} "
                "arguments; expected (output_token_ids, logits) or (prompt_token_ids, output_token_ids, logits)")
        resolved.append(item)
    return resolved


def apply_logits_processors(logits: torch.Tensor, seqs, rows=None) -> tuple[torch.Tensor, dict[int, str]]:
    """Run the processors of ``seqs[i]`` on row i of ``logits`` [B, V], for i in ``rows`` (default: all).

    Returns the logits (the same tensor when no row has processors, else a copy) and
    {row: error message} for rows whose processor failed; those rows keep their raw logits.
    """
    rows = [int(i) for i in (range(len(seqs)) if rows is None else rows) if seqs[int(i)].params.logits_processors]
    if not rows:
        return logits, {}
    out = logits.clone()
    errors: dict[int, str] = {}
    for i in rows:
        seq = seqs[i]
        prompt, output = seq.token_ids[: seq.num_prompt_tokens], seq.output_token_ids
        try:
            out[i] = _run_row(seq.params.logits_processors, prompt, output, logits[i])
        except _ProcessorFailed as failure:
            errors[i] = str(failure)
    return out, errors


class _ProcessorFailed(Exception):
    pass


def _run_row(processors, prompt: list[int], output: list[int], raw: torch.Tensor) -> torch.Tensor:
    row = raw.float().clone()
    for fn in processors:
        where = f"logits processor {processor_name(fn)} failed at output token {len(output)}"
        try:
            result = fn(list(prompt), list(output), row) if num_args(fn) == 3 else fn(list(output), row)
        except Exception as exc:  # the user's code: any error fails only this sequence
            raise _ProcessorFailed(f"{where}: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, torch.Tensor):
            raise _ProcessorFailed(f"{where}: returned {type(result).__name__}, expected a torch.Tensor")
        if tuple(result.shape) != tuple(raw.shape):
            raise _ProcessorFailed(f"{where}: returned shape {tuple(result.shape)}, expected {tuple(raw.shape)}")
        row = result.to(device=raw.device, dtype=torch.float32)
    return row
