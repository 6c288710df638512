"""The test harness for sampling steps: ``check_sampling_step(step)`` (also in ``bare_engine.testing``).

It checks, for a registered step or a SamplingStep object:

1. **kernel == reference** over random rows and edge cases (ties, -inf, all masked
   but one, nothing finite, vocabularies that are not a multiple of any block size),
   with per-row values in one batch; and that the step never revives a -inf token
   and keeps at least one token of a row that had one;
2. **batch invariance**: a row's output (and its sampled token, through the whole
   seeded sampler, mixed with greedy, plain and filtered rows) is the same alone,
   in a batch, and in a permuted batch; with a kernel, the Triton sampler's tokens
   equal the torch sampler's;
3. **distribution**: tokens drawn through the sampler with many seeds against the
   exact distribution ``softmax(step(z))`` (chi-square, and no token outside it);
4. **greedy rows untouched**: a greedy row with the step set takes ``argmax`` of
   its raw logits.

Kernels run on CUDA or, on a CPU, under ``TRITON_INTERPRET=1`` (set it before
importing triton). Raises AssertionError naming the failed check; returns a report.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bare_engine.sample.sampling_steps import SamplingStep, get_step, sample_with_steps


@dataclass
class StepReport:
    step: str
    kernel_checked: bool
    cases: int = 0  # kernel-vs-reference batches compared
    chi_square: list[tuple[float, float]] = field(default_factory=list)  # (value, p-value)

    def __str__(self) -> str:
        kernel = f"kernel == reference on {self.cases} batches" if self.kernel_checked else "no kernel checked"
        ps = ", ".join(f"{v:g}: p={p:.3g}" for v, p in self.chi_square)
        return f"{self.step}: {kernel}; batch invariant; greedy untouched; chi-square {ps}"


def check_sampling_step(
    step: SamplingStep | str,
    *,
    values: tuple[float, ...] | None = None,
    vocab_sizes: tuple[int, ...] = (1, 7, 1000, 2051),
    draws: int = 4000,
    alpha: float = 1e-4,
    device: str | torch.device = "cpu",
    check_kernel: bool = True,
    seed: int = 0,
) -> StepReport:
    """Run every check on ``step`` (see the module docstring); ``values`` default to its example_values."""
    step = get_step(step) if isinstance(step, str) else step
    values = tuple(values if values is not None else step.example_values)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    use_kernel = check_kernel and step.kernel is not None
    if use_kernel:
        _require_triton(device)
    report = StepReport(step.name, use_kernel)
    for vocab in vocab_sizes:
        for case, z in enumerate(_edge_batches(vocab, gen)):
            z = z.to(device)
            vals = torch.tensor([values[i % len(values)] for i in range(z.shape[0])], device=device)
            reference = step.reference(z, vals)
            _check_shape_and_mask(step, z, reference, "reference")
            if use_kernel:
                _check_equal(step, reference, step.kernel(z, vals), z, vals)
                report.cases += 1
            if case == 4:  # random rows and the odd ones; each row alone costs a launch
                _check_rowwise(step, z, vals, use_kernel)
    _check_sampler_invariance(step, values, gen, device, use_kernel)
    for value in values:
        report.chi_square.append((value, _check_distribution(step, value, gen, device, draws, alpha)))
    _check_greedy_untouched(step, values, gen, device, use_kernel)
    return report


# ----------------------------------------------------------------------------- inputs


def _edge_batches(vocab: int, gen: torch.Generator) -> list[Tensor]:
    """Random rows, ties, -inf, one finite token, none finite, extreme scales; each a batch."""
    rows = 4
    z = torch.randn(rows, vocab, generator=gen) * (0.5 + 4 * torch.rand(rows, 1, generator=gen))
    ties = torch.round(torch.randn(rows, vocab, generator=gen) * 2)
    some_inf = torch.randn(rows, vocab, generator=gen)
    some_inf[torch.rand(rows, vocab, generator=gen) < 0.5] = -math.inf
    one_left = torch.full((rows, vocab), -math.inf)
    one_left[torch.arange(rows), torch.randint(0, vocab, (rows,), generator=gen)] = torch.randn(rows, generator=gen)
    mixed = torch.randn(rows, vocab, generator=gen) * 3
    mixed[0] = -math.inf  # nothing finite
    mixed[1] = 7.0  # all equal
    mixed[2] *= 1e3  # large logits
    return [z, ties, some_inf, one_left, mixed]


def _require_triton(device: torch.device) -> None:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("checking a Triton kernel on the CPU needs TRITON_INTERPRET=1 (set before importing "
                           "triton), or pass check_kernel=False")


# ----------------------------------------------------------------------------- checks on the step alone


def _fail(step: SamplingStep, check: str, detail: str) -> None:
    raise AssertionError(f"sampling step {step.name}: {check}: {detail}")


def _check_shape_and_mask(step: SamplingStep, z: Tensor, out: Tensor, what: str) -> None:
    if not isinstance(out, Tensor) or out.shape != z.shape or out.dtype != torch.float32:
        _fail(step, f"{what} output", f"expected float32 {tuple(z.shape)}, got {getattr(out, 'dtype', type(out))} "
                                      f"{tuple(getattr(out, 'shape', ()))}")
    finite_in, finite_out = z > -math.inf, out > -math.inf
    revived = finite_out & ~finite_in
    if revived.any():
        row, tok = (int(x) for x in revived.nonzero()[0])
        _fail(step, f"{what} revives a -inf token", f"row {row}, token {tok} (it may be forbidden by a mask)")
    emptied = finite_in.any(dim=1) & ~finite_out.any(dim=1)
    if emptied.any():
        _fail(step, f"{what} removes every token", f"row {int(emptied.nonzero()[0])}")


def _check_equal(step: SamplingStep, reference: Tensor, kernel: Tensor, z: Tensor, vals: Tensor) -> None:
    _check_shape_and_mask(step, z, kernel, "kernel")
    kept_ref, kept_ker = reference > -math.inf, kernel > -math.inf
    differ = (kept_ref != kept_ker) | (kept_ref & ((reference - kernel).abs() > 1e-6 * reference.abs().clamp(min=1)))
    if differ.any():
        row, tok = (int(x) for x in differ.nonzero()[0])
        _fail(step, "kernel != reference",
              f"vocab {z.shape[1]}, row {row} (value {float(vals[row]):g}), token {tok}: z={float(z[row, tok])}, "
              f"reference {float(reference[row, tok])}, kernel {float(kernel[row, tok])}")


def _check_rowwise(step: SamplingStep, z: Tensor, vals: Tensor, use_kernel: bool) -> None:
    batch = step.apply(z, vals, use_kernel)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(z.shape[1])).to(z.device)
    permuted = step.apply(z[perm], vals[perm], use_kernel)
    for row in (0, z.shape[0] - 1):  # each row alone costs a launch: the first and the last
        alone = step.apply(z[row:row + 1], vals[row:row + 1], use_kernel)[0]
        if not torch.equal(alone, batch[row]) or not torch.equal(permuted[(perm == row).nonzero()[0, 0]], batch[row]):
            _fail(step, "not batch-invariant", f"vocab {z.shape[1]}, row {row}: its output alone differs from in a batch")


# ----------------------------------------------------------------------------- checks through the sampler


def _tensors(rows: int, device, **columns):
    from bare_engine.kernels.sampling_ref import SamplingTensors

    base = dict(temperature=torch.ones(rows), top_k=torch.zeros(rows, dtype=torch.int32), top_p=torch.ones(rows),
                min_p=torch.zeros(rows), repetition_penalty=torch.ones(rows), presence_penalty=torch.zeros(rows),
                frequency_penalty=torch.zeros(rows), seed=torch.arange(rows, dtype=torch.int64) * 7919 + 5,
                position=torch.zeros(rows, dtype=torch.int64))
    for name, value in columns.items():
        base[name] = torch.as_tensor(value, dtype=base[name].dtype)
    return SamplingTensors(**{k: v.to(device) for k, v in base.items()})


def _draw(step: SamplingStep, logits: Tensor, params, values: list[float | None], impl=None, use_kernel=False):
    """Tokens of ``logits`` through the sampler, row i with the step at values[i] (None: without)."""
    if impl is None:
        from bare_engine.kernels import sampling_ref as impl
    if step.builtin:  # a built-in filter is set through its own SamplingTensors column
        column = getattr(params, step.name).clone()
        for i, v in enumerate(values):
            if v is not None:
                column[i] = v
        params = dataclasses.replace(params, **{step.name: column})
        return impl.sample(logits, params, None, None).token_ids
    row_steps = [None if v is None else {step.name: v} for v in values]
    return sample_with_steps(impl, logits, params, None, None, row_steps, use_kernel=use_kernel).token_ids


def _mixed_batch(step: SamplingStep, values, gen, device, vocab: int = 300):
    rows = 8
    logits = (torch.randn(rows, vocab, generator=gen) * 2).to(device)
    params = _tensors(rows, device, temperature=[0.8, 0.0, 1.0, 1.3, 0.7, 1.0, 0.0, 0.9],
                      top_k=[0, 0, 20, 0, 0, 5, 0, 0], top_p=[1, 1, 1, 0.8, 1, 1, 1, 1],
                      min_p=[0, 0, 0, 0, 0.05, 0, 0, 0], seed=torch.randint(0, 2**40, (rows,), generator=gen),
                      position=torch.randint(0, 1000, (rows,), generator=gen))
    chosen = [values[i % len(values)] if i % 3 != 2 else None for i in range(rows)]
    return logits, params, chosen


def _check_sampler_invariance(step, values, gen, device, use_kernel) -> None:
    logits, params, chosen = _mixed_batch(step, values, gen, device)
    batch = _draw(step, logits, params, chosen)
    perm = torch.randperm(logits.shape[0], generator=gen).tolist()
    permuted = _draw(step, logits[perm], _rows(params, perm), [chosen[i] for i in perm])
    for pos, row in enumerate(perm):
        alone = _draw(step, logits[row:row + 1], _rows(params, [row]), [chosen[row]])
        if int(alone[0]) != int(batch[row]) or int(permuted[pos]) != int(batch[row]):
            _fail(step, "sampling not batch-invariant", f"row {row} (value {chosen[row]}) drew a different token "
                                                        "alone or permuted than in the batch")
    if use_kernel:
        from bare_engine.kernels import sampling as tri

        kernel_tokens = _draw(step, logits, params, chosen, impl=tri, use_kernel=True)
        if not torch.equal(kernel_tokens.cpu(), batch.cpu()):
            row = int((kernel_tokens.cpu() != batch.cpu()).nonzero()[0])
            _fail(step, "Triton sampler != torch sampler", f"row {row} (value {chosen[row]})")


def _rows(params, rows: list[int]):
    idx = torch.tensor(rows, device=params.temperature.device)
    return type(params)(**{f.name: (getattr(params, f.name)[idx] if getattr(params, f.name) is not None else None)
                           for f in dataclasses.fields(params)})


def _check_distribution(step, value, gen, device, draws: int, alpha: float) -> float:
    vocab = 24
    z = torch.randn(1, vocab, generator=gen) * 1.5
    z[0, :3] = z[0, 3]  # a tie
    z = z.to(device)
    filtered = step.reference(z, torch.tensor([value], device=device))[0].double().cpu()
    expected = torch.softmax(filtered, dim=0)
    logits = z.expand(draws, vocab).contiguous()
    params = _tensors(draws, device, seed=torch.randint(0, 2**40, (draws,), generator=gen),
                      position=torch.randint(0, 2**20, (draws,), generator=gen))
    tokens = _draw(step, logits, params, [value] * draws).cpu()
    outside = (expected[tokens] == 0).nonzero()
    if outside.numel():
        _fail(step, "sampled a removed token", f"value {value:g}: token {int(tokens[outside[0, 0]])}")
    observed = torch.bincount(tokens, minlength=vocab).double()
    p = _chi_square_p(observed, expected * draws)
    if p < alpha:
        _fail(step, "sampled distribution != softmax(step(z))", f"value {value:g}: chi-square p = {p:.2g} < {alpha}")
    return p


def _chi_square_p(observed: Tensor, expected: Tensor) -> float:
    """p-value of Pearson's chi-square, cells with expected count < 5 pooled into one."""
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    df = obs.numel() - 1
    if df < 1:
        return 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def _check_greedy_untouched(step, values, gen, device, use_kernel) -> None:
    rows = 4
    logits = (torch.randn(rows, 257, generator=gen) * 2).to(device)
    params = _tensors(rows, device, temperature=torch.zeros(rows))
    tokens = _draw(step, logits, params, [values[i % len(values)] for i in range(rows)], use_kernel=use_kernel)
    if not torch.equal(tokens.cpu(), logits.argmax(dim=1).cpu()):
        _fail(step, "greedy rows changed", "a greedy row with the step set did not take argmax of its logits")
