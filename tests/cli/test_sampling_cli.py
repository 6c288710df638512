"""Sampling steps and logits processors from the CLI (generate, run) and pipeline configs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bare_engine.cli import main
from bare_engine.pipeline.config import load_config
from bare_engine.testing import make_model_dir

pytestmark = pytest.mark.cli

PROCESSORS = """
import math

def ban_low_ids(output_token_ids, logits):
    logits[:100] = -math.inf
    return logits

def explode(output_token_ids, logits):
    raise RuntimeError("boom")
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama")


@pytest.fixture
def processors(tmp_path, monkeypatch):
    (tmp_path / "cli_processors.py").write_text(PROCESSORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_processors"


def generate(model_dir, *flags):
    args = ["generate", "--model", str(model_dir), "--prompt", "the quick brown", "--prompt", "Question:",
            "--max-tokens", "5", "--ignore-eos", "--json", *flags]
    return CliRunner().invoke(main, args)


def token_ids(result):
    assert result.exit_code == 0, result.output
    return [json.loads(line)["token_ids"] for line in result.stdout.splitlines()]


def test_generate_with_a_sampling_step(model_dir):
    greedy = token_ids(generate(model_dir, "--temperature", "0"))
    assert token_ids(generate(model_dir, "--temperature", "1.5", "--seed", "2",
                              "--sampling-step", "top_n_sigma=0")) == greedy
    assert token_ids(generate(model_dir, "--temperature", "1.5", "--seed", "2")) != greedy


def test_generate_with_a_logits_processor(model_dir, processors):
    outs = token_ids(generate(model_dir, "--seed", "1", "--logits-processor", f"{processors}:ban_low_ids"))
    assert all(t >= 100 for ids in outs for t in ids)


@pytest.mark.parametrize("flags, message", [
    (["--sampling-step", "nope=1"], "error: invalid sampling parameter: unknown sampling step 'nope'"),
    (["--sampling-step", "top_n_sigma"], "expected NAME=NUMBER"),
    (["--logits-processor", "no_such_module:fn"], "cannot import no_such_module"),
])
def test_generate_bad_step_or_processor(model_dir, flags, message):
    result = generate(model_dir, *flags)
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output


def test_generate_reports_a_failing_processor(model_dir, processors):
    result = generate(model_dir, "--logits-processor", f"{processors}:explode")
    assert result.exit_code == 1
    assert [json.loads(line)["finish_reason"] for line in result.stdout.splitlines()] == ["error", "error"]
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: logits processor cli_processors.explode failed at output token 0: RuntimeError: boom "
                     "(and 1 more)"]


def test_pipeline_config_names_steps_and_processors_per_stage(tmp_path, processors):
    config = tmp_path / "job.toml"
    config.write_text(
        "[sampling.base]\nsampling_steps = {top_n_sigma = 1.5}\n"
        f"logits_processors = [\"{processors}:ban_low_ids\"]\n")
    cfg = load_config(config, {"seeds": "s.jsonl", "base": "b", "instruct": "i"})
    base = cfg.sampling.base.params(seed=1)
    assert base.sampling_steps == {"top_n_sigma": 1.5}
    assert [f.__name__ for f in base.logits_processors] == ["ban_low_ids"]
    assert cfg.sampling.refine.params(seed=1).sampling_steps is None
    # --sampling-step sets every stage; a per-stage flag takes JSON
    result = CliRunner().invoke(main, ["run", str(config), "--seeds", "s.jsonl", "--base", "b", "--instruct", "i",
                                       "--sampling-step", "top_n_sigma=0.5", "--print-config"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("top_n_sigma: 0.5") == 4
    bad = CliRunner().invoke(main, ["run", str(config), "--seeds", "s.jsonl", "--base", "b", "--instruct", "i",
                                    "--refine-sampling-steps", '{"top_n_sigma": -1}'])
    assert bad.exit_code == 1 and "sampling.refine: invalid sampling parameter: sampling step top_n_sigma" in bad.stderr


def test_run_with_a_sampling_step_reaches_the_engine(tmp_path):
    # Fixed seed examples give every candidate the same base prompt; top_n_sigma=0 keeps only the
    # maximum, so every candidate's base text is the same greedy one (and differs without the step).
    def base_texts(*flags):
        out = tmp_path / f"out{len(flags)}.jsonl"
        result = CliRunner().invoke(main, ["run", "--mode", "base", "--num", "3", "--out", str(out), "--no-progress",
                                           "--base-temperature", "1.0", "--base-max-tokens", "300",
                                           "--max-candidates", "6", *flags])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["base"]["text"] for line in out.read_text().splitlines()]

    with_step = base_texts("--sampling-step", "top_n_sigma=0")
    assert len(with_step) == 3 and len(set(with_step)) == 1
    assert len(set(base_texts())) > 1
