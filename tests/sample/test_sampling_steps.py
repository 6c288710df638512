"""Sampling steps: the registry, top-nσ from first principles, the harness on every step and on broken ones."""

from __future__ import annotations

import math

import pytest
import torch
from bare_engine.kernels.top_n_sigma_ref import top_n_sigma

from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.kernels import sampling_ref as ref
from bare_engine.sample.sampling_steps import (
    SamplingStep,
    apply_steps,
    get_step,
    parse_step_assignments,
    registered_steps,
    sample_with_steps,
)
from bare_engine.sampling_params import SamplingParams
from bare_engine.testing import check_sampling_step
from bare_engine.testing.step_checks import _chi_square_p


def test_top_n_sigma_from_first_principles():
    z = torch.tensor([[0.0, 1.0, 2.0, 3.0, -math.inf]])
    # finite mean 1.5, population std sqrt(1.25) = 1.118: threshold 3 - 1.118 keeps 2 and 3
    out = top_n_sigma(z, torch.tensor([1.0]))
    assert out[0].tolist() == [-math.inf, -math.inf, 2.0, 3.0, -math.inf]
    assert top_n_sigma(z, torch.tensor([0.0]))[0].tolist() == [-math.inf] * 3 + [3.0, -math.inf]
    assert torch.equal(top_n_sigma(z, torch.tensor([10.0])), z)
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(4, 50, generator=gen) * 2
    n = torch.tensor([0.3, 1.0, 1.5, 2.5])
    # max and sigma both scale with 1 / temperature: the kept set does not depend on it
    assert torch.equal(top_n_sigma(rows, n) > -math.inf, top_n_sigma(rows / 0.4, n) > -math.inf)


def test_top_n_sigma_passes_the_harness():
    report = check_sampling_step("top_n_sigma")
    assert report.kernel_checked and report.cases == 20  # 4 vocabularies x 5 edge batches
    assert [v for v, _ in report.chi_square] == list(get_step("top_n_sigma").example_values)


@pytest.mark.parametrize("name", [n for n, s in registered_steps().items() if s.builtin])
def test_built_in_filters_pass_the_harness(name):
    # Their kernel is the fused sampler (tests/test_sampling_kernels.py covers it at length): one small vocabulary.
    report = check_sampling_step(name, vocab_sizes=(37,), draws=2000)
    assert report.kernel_checked


def test_every_registered_step_is_covered():
    assert {n for n, s in registered_steps().items() if not s.builtin} == {"top_n_sigma"}
    assert {n for n, s in registered_steps().items() if s.builtin} == {"top_k", "top_p", "min_p"}


def _broken(name, reference, kernel=None):
    return SamplingStep(name, reference, kernel, example_values=(1.0,))


def test_harness_catches_a_kernel_that_differs_from_its_reference():
    step = get_step("top_n_sigma")
    wrong = _broken("wrong_kernel", step.reference, lambda z, n: step.reference(z, n + 0.25))
    with pytest.raises(AssertionError, match="kernel != reference"):
        check_sampling_step(wrong, vocab_sizes=(50,))


def test_harness_catches_a_step_that_looks_at_other_rows():
    def batch_max(z, n):  # threshold from the whole batch's max: not row-wise
        finite = z > -math.inf
        top = torch.where(finite, z, -math.inf).max()
        keep = finite & ((z >= top - 3 * n[:, None]) | (z == torch.where(finite, z, -math.inf).amax(1, keepdim=True)))
        return torch.where(keep, z, -math.inf)

    with pytest.raises(AssertionError, match="batch-invariant"):
        check_sampling_step(_broken("batch_max", batch_max), vocab_sizes=(50,))


def test_harness_catches_a_step_that_revives_masked_tokens():
    with pytest.raises(AssertionError, match="revives a -inf token"):
        check_sampling_step(_broken("revive", lambda z, n: torch.nan_to_num(z, neginf=-30.0)), vocab_sizes=(50,))


def test_harness_catches_a_step_that_removes_everything():
    with pytest.raises(AssertionError, match="removes every token"):
        check_sampling_step(_broken("empty", lambda z, n: torch.full_like(z, -math.inf)), vocab_sizes=(50,))


def test_chi_square_rejects_a_wrong_distribution():
    expected = torch.tensor([0.5, 0.3, 0.2]) * 3000
    assert _chi_square_p(torch.tensor([1510.0, 890.0, 600.0]), expected) > 0.1
    assert _chi_square_p(torch.tensor([1650.0, 800.0, 550.0]), expected) < 1e-4


def test_steps_run_after_penalties_mask_and_temperature_inside_the_seeded_draw():
    gen = torch.Generator().manual_seed(3)
    rows, vocab = 6, 40
    logits = torch.randn(rows, vocab, generator=gen) * 2
    allowed = torch.rand(rows, vocab, generator=gen) < 0.6
    allowed[:, 0] = True
    params = ref.SamplingTensors(
        temperature=torch.tensor([0.7, 1.0, 0.0, 1.3, 0.9, 1.0]), top_k=torch.tensor([0, 0, 0, 5, 0, 0]).int(),
        top_p=torch.ones(rows), min_p=torch.zeros(rows), repetition_penalty=torch.full((rows,), 1.4),
        presence_penalty=torch.full((rows,), 0.5), frequency_penalty=torch.zeros(rows),
        seed=torch.arange(rows) * 31 + 7, position=torch.arange(rows) * 3, penalty_rows=torch.arange(rows),
        logit_bias=torch.randn(rows, vocab, generator=gen), allowed_mask=allowed)
    penalties = ref.PenaltyState(rows, vocab, "cpu")
    for row in range(rows):
        penalties.reset_row(row, torch.randint(0, vocab, (5,), generator=gen), torch.tensor([row, row + 1]))
    row_steps = [{"top_n_sigma": 0.8}, None, {"top_n_sigma": 0.5}, {"top_n_sigma": 1.2}, {"top_n_sigma": 0.0}, None]
    got = sample_with_steps(ref, logits, params, penalties, 2, row_steps, use_kernel=False)

    z = ref.scaled_logits(ref.penalized_logits(logits, params, penalties), params)
    plain = ref.sample(logits, params, penalties, 2)
    for row, steps in enumerate(row_steps):
        if steps is None or params.temperature[row] == 0:  # untouched: the plain draw
            assert int(got.token_ids[row]) == int(plain.token_ids[row])
            continue
        kept = top_n_sigma(z[row:row + 1], torch.tensor([steps["top_n_sigma"]]))[0] > -math.inf
        token = int(got.token_ids[row])
        assert kept[token] and allowed[row, token]
        lp = got.top_logprobs[row]
        assert torch.exp(lp[lp > -math.inf]).sum() <= 1 + 1e-5  # logprobs of the filtered distribution
    assert int(got.token_ids[4]) == int(z[4].argmax())  # n = 0 keeps only the maximum


def test_apply_steps_in_the_order_given():
    def boost_first(z, v):
        z = z.clone()
        z[:, 0] += v
        return z

    z = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    from bare_engine.sample.sampling_steps import _STEPS, register_step

    register_step(SamplingStep("boost_first", boost_first))
    try:
        out = apply_steps(z, [{"boost_first": 5.0, "top_n_sigma": 0.5}, {"top_n_sigma": 0.5, "boost_first": 5.0}])
        assert out[0].tolist() == [5.0, -math.inf, -math.inf, -math.inf]
        assert out[1].tolist() == [-math.inf, -math.inf, -math.inf, 3.0]
    finally:
        _STEPS.pop("boost_first")


def test_sampling_params_validate_steps():
    assert SamplingParams(sampling_steps={"top_n_sigma": 1}).sampling_steps == {"top_n_sigma": 1}
    cases = {
        "unknown sampling step 'nope'": {"nope": 1.0},
        "set SamplingParams.top_k": {"top_k": 3},
        "must be >= 0, got -1.0": {"top_n_sigma": -1.0},
        "needs a finite number": {"top_n_sigma": "1"},
    }
    for message, steps in cases.items():
        with pytest.raises(InvalidSamplingParamsError, match=message):
            SamplingParams(sampling_steps=steps)
    with pytest.raises(InvalidSamplingParamsError, match="must map step names"):
        SamplingParams(sampling_steps=["top_n_sigma"])


def test_a_step_named_by_module_and_attribute(tmp_path, monkeypatch):
    (tmp_path / "my_steps.py").write_text(
        "from bare_engine.sample.sampling_steps import SamplingStep\n"
        "halve = SamplingStep('halve', lambda z, v: z * v[:, None])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert SamplingParams(sampling_steps={"my_steps:halve": 0.5}).sampling_steps == {"my_steps:halve": 0.5}
    with pytest.raises(InvalidSamplingParamsError, match="has no attribute nothing"):
        SamplingParams(sampling_steps={"my_steps:nothing": 0.5})


def test_parse_step_assignments():
    assert parse_step_assignments(["top_n_sigma=1.5"]) == {"top_n_sigma": 1.5}
    for bad in ("top_n_sigma", "top_n_sigma=x", "=1"):
        with pytest.raises(InvalidSamplingParamsError, match="expected NAME=NUMBER"):
            parse_step_assignments([bad])


@pytest.mark.cuda
def test_top_n_sigma_passes_the_harness_on_a_gpu_at_real_vocabulary_sizes():
    report = check_sampling_step("top_n_sigma", device="cuda", vocab_sizes=(1, 1000, 32000, 151936))
    assert report.kernel_checked and report.cases == 20
