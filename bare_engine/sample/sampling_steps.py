"""Named sampling steps: pure filters / transforms over ``[rows, vocab]`` logits.

A step is ``fn(z, value) -> z'``: ``z`` is float32 ``[R, V]`` (logits after logits
processors, penalties, bias, mask and temperature), ``value`` float32 ``[R]`` (one
parameter per row), and ``z'`` the new logits, -inf for removed tokens. It must be
row-wise (a row's output depends only on that row and its value), so that seeds and
batch invariance hold. A request selects steps through
``SamplingParams(sampling_steps={"top_n_sigma": 1.0})``; they run, in the order given,
on sampled rows only (greedy rows are untouched), after temperature and before the
built-in filters, and the filtered rows then go through the same seeded Gumbel-max
draw as every other row (``sample_with_steps``). Each step has a torch ``reference``
(the specification) and optionally a Triton ``kernel`` with the same contract, used
when the sampler runs on Triton; ``bare_engine.testing.check_sampling_step`` checks
one against the other, batch invariance and the sampled distribution.

The built-in filters are described in the same shape (``top_k``, ``top_p``, ``min_p``,
``builtin=True``) so the harness covers them, but the fused sampler runs them in one
pass and they are set through SamplingParams' own fields, not ``sampling_steps``.

The registry is a table of pure functions (like a codec table), not engine state.
A step defined outside the package is registered with ``register_step`` or named
as ``package.module:attribute`` (a SamplingStep object) in ``sampling_steps``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from bare_engine.errors import ConfigError, InvalidSamplingParamsError

StepFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SamplingStep:
    name: str
    reference: StepFn  # torch, the specification
    kernel: StepFn | None = None  # Triton, same contract; None: the reference runs everywhere
    check: Callable[[float], str | None] | None = None  # error message for a bad value, else None
    example_values: tuple[float, ...] = (0.0, 1.0)  # what the test harness tries
    builtin: bool = False  # run inside the fused sampler, set by SamplingParams' own field
    doc: str = ""

    def apply(self, z: Tensor, values: Tensor, use_kernel: bool = False) -> Tensor:
        fn = self.kernel if use_kernel and self.kernel is not None else self.reference
        return fn(z, values)

    def validate(self, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidSamplingParamsError(f"invalid sampling parameter: sampling step {self.name} needs a "
                                             f"finite number, got {value!r}")
        message = self.check(float(value)) if self.check else None
        if message:
            raise InvalidSamplingParamsError(f"invalid sampling parameter: sampling step {self.name}: {message}")


_STEPS: dict[str, SamplingStep] = {}


def register_step(step: SamplingStep, *, replace: bool = False) -> SamplingStep:
    if step.name in _STEPS and not replace and _STEPS[step.name] is not step:
        raise ConfigError(f"a sampling step named {step.name!r} is already registered")
    _STEPS[step.name] = step
    return step


def registered_steps() -> dict[str, SamplingStep]:
    return dict(_STEPS)


def get_step(name: str) -> SamplingStep:
    """A registered step by name, or the SamplingStep object ``module:attribute`` names."""
    if name in _STEPS:
        return _STEPS[name]
    if ":" in name:
        from bare_engine.utils.user_code import import_object

        try:
            step = import_object(name, "sampling step")
        except ConfigError as exc:
            raise InvalidSamplingParamsError(f"invalid sampling parameter: {exc}") from None
        if not isinstance(step, SamplingStep):
            raise InvalidSamplingParamsError(f"invalid sampling parameter: sampling step {name!r} is a "
                                             f"{type(step).__name__}, not a SamplingStep")
        return step
    known = ", ".join(n for n, s in _STEPS.items() if not s.builtin)
    raise InvalidSamplingParamsError(f"invalid sampling parameter: unknown sampling step {name!r} (registered: {known})")


def validate_steps(steps) -> None:
    """Check a SamplingParams.sampling_steps value: {name: number}, registered, non-builtin names."""
    if not isinstance(steps, dict) or not all(isinstance(k, str) for k in steps):
        raise InvalidSamplingParamsError(f"invalid sampling parameter: sampling_steps must map step names to "
                                         f"numbers, got {steps!r}")
    for name, value in steps.items():
        step = get_step(name)
        if step.builtin:
            raise InvalidSamplingParamsError(f"invalid sampling parameter: {name} is built into the fused sampler: "
                                             f"set SamplingParams.{name} instead of sampling_steps")
        step.validate(value)


def parse_step_assignments(items) -> dict[str, float]:
    """``["top_n_sigma=1.0", ...]`` (the CLI's --sampling-step) -> {name: value}."""
    steps: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            steps[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InvalidSamplingParamsError(f"invalid sampling parameter: --sampling-step {item!r}: expected "
                                             "NAME=NUMBER, e.g. top_n_sigma=1.0")
    validate_steps(steps)
    return steps


# ----------------------------------------------------------------------------- applying steps


def apply_steps(z: Tensor, row_steps: list[dict[str, float]], use_kernel: bool = False) -> Tensor:
    """Apply each row's steps, in its dict's order, to the rows of ``z`` [R, V] (a new tensor)."""
    out = z.clone()
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, steps in enumerate(row_steps):
        groups.setdefault(tuple(steps), []).append(row)
    for names, rows in groups.items():
        idx = torch.tensor(rows, dtype=torch.int64, device=z.device)
        zg = out.index_select(0, idx)
        for name in names:
            values = torch.tensor([row_steps[r][name] for r in rows], dtype=torch.float32, device=z.device)
            zg = get_step(name).apply(zg, values, use_kernel)
        out.index_copy_(0, idx, zg.float())
    return out


def sample_with_steps(impl, logits: Tensor, params, penalties, num_logprobs, row_steps, *, use_kernel: bool,
                      validate: bool = False):
    """``impl.sample`` where rows with steps get their filtered ``z'`` instead of their raw logits.

    ``row_steps[i]`` is row i's {name: value} (None or empty: no steps; greedy rows ignore
    theirs). Penalties, bias, mask and temperature are folded into ``z'`` (by the
    torch reference, bit-identical to the kernel's), so those rows are passed on with
    neutral parameters (temperature 1, no penalties, bias or mask) and keep their seed,
    position, filters and penalty slot: the same seeded draw, over ``z'``.
    """
    rows = [i for i, steps in enumerate(row_steps) if steps]
    if rows:  # greedy rows ignore the steps (and the filters)
        greedy = (params.temperature == 0).tolist()
        rows = [i for i in rows if not greedy[i]]
    if not rows:
        return impl.sample(logits, params, penalties, num_logprobs, validate=validate)
    from bare_engine.kernels import sampling_ref as ref

    idx = torch.tensor(rows, dtype=torch.int64, device=logits.device)
    sub = _select_rows(params, idx)
    z = ref.scaled_logits(ref.penalized_logits(logits.index_select(0, idx), sub, penalties), sub)
    z = apply_steps(z, [row_steps[i] for i in rows], use_kernel)
    logits = logits.float().clone()
    logits.index_copy_(0, idx, z)
    return impl.sample(logits, _neutral_rows(params, idx), penalties, num_logprobs, validate=validate)


def _select_rows(params, idx: Tensor):
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return type(params)(**{k: (v.index_select(0, idx) if v is not None else None) for k, v in fields.items()})


def _neutral_rows(params, idx: Tensor):
    def set_rows(value: Tensor | None, fill) -> Tensor | None:
        if value is None:
            return None
        value = value.clone()
        value[idx] = fill
        return value

    return dataclasses.replace(
        params,
        temperature=set_rows(params.temperature, 1.0),
        repetition_penalty=set_rows(params.repetition_penalty, 1.0),
        presence_penalty=set_rows(params.presence_penalty, 0.0),
        frequency_penalty=set_rows(params.frequency_penalty, 0.0),
        logit_bias=set_rows(params.logit_bias, 0.0),
        allowed_mask=set_rows(params.allowed_mask, True),
    )


# ----------------------------------------------------------------------------- the registered steps


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def _top_n_sigma_kernel(z: Tensor, values: Tensor) -> Tensor:
    from bare_engine.kernels.top_n_sigma import top_n_sigma

    return top_n_sigma(z, values)


def _top_n_sigma_reference(z: Tensor, values: Tensor) -> Tensor:
    from bare_engine.kernels.top_n_sigma_ref import top_n_sigma

    return top_n_sigma(z, values)


register_step(SamplingStep(
    "top_n_sigma", _top_n_sigma_reference, _top_n_sigma_kernel, _non_negative, (0.0, 0.5, 1.0, 3.0),
    doc="keep z >= max(z) - n * std(z) over the row's finite tokens (Tang et al., 2024)",
))


def _builtin(field: str, check: Callable[[float], str | None], examples: tuple[float, ...], doc: str) -> SamplingStep:
    """A built-in filter as a step: the fused sampler's threshold for that one filter."""

    def tensors(z: Tensor, values: Tensor):
        from bare_engine.kernels import sampling_ref as ref

        def full(value, dtype=torch.float32):
            return torch.full((z.shape[0],), value, dtype=dtype, device=z.device)

        columns = dict(top_k=full(0, torch.int32), top_p=full(1.0), min_p=full(0.0))
        columns[field] = values.to(device=z.device, dtype=columns[field].dtype)
        return ref, ref.SamplingTensors(
            temperature=full(1.0), repetition_penalty=full(1.0), presence_penalty=full(0.0),
            frequency_penalty=full(0.0), seed=full(0, torch.int64), position=full(0, torch.int64), **columns)

    def reference(z: Tensor, values: Tensor) -> Tensor:
        ref, t = tensors(z, values)
        return torch.where(ref.kept_mask(z, ref.filter_threshold(z, t)), z, -math.inf)

    def kernel(z: Tensor, values: Tensor) -> Tensor:
        from bare_engine.kernels import sampling as tri

        ref, t = tensors(z, values)
        return torch.where(ref.kept_mask(z, tri._sample(z, t, None, None)[1]), z, -math.inf)

    return SamplingStep(field, reference, kernel, check, examples, builtin=True, doc=doc)


register_step(_builtin("top_k", lambda v: None if v >= 1 and v == int(v) else f"must be an integer >= 1, got {v}",
                       (1.0, 3.0, 10.0), "keep the k largest z (ties at the k-th kept)"))
register_step(_builtin("top_p", lambda v: None if 0 < v <= 1 else f"must be in (0, 1], got {v}", (0.3, 0.9),
                       "keep the smallest top set with probability mass >= p (plus ties)"))
register_step(_builtin("min_p", lambda v: None if 0 <= v <= 1 else f"must be in [0, 1], got {v}", (0.05, 0.3),
                       "keep p >= min_p * max(p)"))
