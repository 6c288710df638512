"""`bare-engine run` on bad input: one line on stderr, non-zero exit, no traceback, no model loaded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_pipeline_fake_engine import (
    SEEDS,
    fake_factory,
    fake_setup,
    make_fake_model,
    write_jsonl,
)

from bare_engine.errors import ConfigError
from bare_engine.pipeline.cli import EXIT_ERROR, run_command
from bare_engine.pipeline.run import run_pipeline

pytestmark = pytest.mark.cli


@pytest.fixture
def setup(tmp_path):
    base = make_fake_model(tmp_path / "base")
    instruct = make_fake_model(tmp_path / "instruct")
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    args = ["--base", str(base), "--instruct", str(instruct), "--seeds", str(seeds),
            "--out", str(tmp_path / "out" / "o.jsonl"), "--no-progress"]
    return tmp_path, args


def _fails_with(args, message):
    result = CliRunner().invoke(run_command, args)
    assert result.exit_code == EXIT_ERROR, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def _no_engine(cfg):
    raise AssertionError("a model was loaded before the bad input was reported")


def test_missing_seeds_file(setup):
    tmp, args = setup
    _fails_with(args + ["--seeds", str(tmp / "nope.jsonl")], "seeds file not found")


def test_empty_seeds_file(setup):
    tmp, args = setup
    (tmp / "empty.jsonl").write_text("\n\n")
    _fails_with(args + ["--seeds", str(tmp / "empty.jsonl")], "is empty")


def test_seeds_lacking_a_configured_field(setup):
    tmp, args = setup
    write_jsonl(tmp / "s.jsonl", [{"question": "q", "answer": "a"}] * 3 + [{"question": "q"}])
    _fails_with(args + ["--seeds", str(tmp / "s.jsonl")], "line 4: missing field 'answer'")


def test_seeds_with_invalid_json(setup):
    tmp, args = setup
    (tmp / "s.jsonl").write_text('{"question": "q", "answer": "a"}\n{oops\n')
    _fails_with(args + ["--seeds", str(tmp / "s.jsonl")], "line 2: invalid JSON")


def test_fewer_seeds_than_k(setup):
    _, args = setup
    _fails_with(args + ["--k", "7"], "has 6 examples, fewer than k=7")


def test_template_with_an_unknown_field(setup):
    _, args = setup
    _fails_with(args + ["--example", "Q: {question} S: {solution}"], "unknown field {solution}")


def test_instruct_model_without_chat_template(setup):
    tmp, args = setup
    plain = make_fake_model(tmp / "plain", chat_template=False)
    _fails_with(args + ["--instruct", str(plain)], "has no chat template")
    _fails_with(args + ["--instruct", str(plain), "--mode", "instruct"], "has no chat template")


def test_missing_model_folder(setup):
    tmp, args = setup
    _fails_with(args + ["--base", str(tmp / "nothing")], "base model not found")


def test_output_path_that_cannot_be_written(setup):
    tmp, args = setup
    (tmp / "a_file").write_text("x")
    _fails_with(args + ["--out", str(tmp / "a_file" / "o.jsonl")], "cannot write output file")
    _fails_with(args + ["--out", str(tmp)], "is a directory")


def test_refine_candidates_lacking_a_field(setup):
    tmp, args = setup
    write_jsonl(tmp / "c.jsonl", [{"question": "q"}])
    _fails_with(args + ["--mode", "refine", "--candidates", str(tmp / "c.jsonl")], "candidates file")


def test_bad_config_file_and_values(setup):
    tmp, args = setup
    _fails_with(args + [str(tmp / "missing.toml")], "cannot read config file")
    _fails_with(args + ["--mode", "fancy"], "mode must be one of")
    _fails_with(args + ["--base-temperature", "-1"], "sampling.base: invalid sampling parameter")


def test_resume_with_a_different_config_is_refused(setup):
    tmp, _ = setup
    cfg = fake_setup(tmp, num=3)
    run_pipeline(cfg, fake_factory(), log=lambda _: None)
    args = ["--base", cfg.base, "--instruct", cfg.instruct, "--seeds", cfg.seeds, "--out", cfg.out, "--num", "3",
            "--base-max-tokens", "60", "--refine-max-tokens", "60"]
    _fails_with(args + ["--seed", "1"], "was written with a different config (seed: 0 -> 1)")
    # The same job with a met target needs no model at all.
    result = CliRunner().invoke(run_command, args + ["--no-progress"])
    assert result.exit_code == 0 and "nothing to do" in result.stderr


@pytest.mark.parametrize("flag", [[], ["--mode", "base"]])
def test_bad_inputs_are_reported_before_any_model_loads(setup, flag):
    tmp, _ = setup
    cfg = fake_setup(tmp, seeds=str(write_jsonl(tmp / "few.jsonl", SEEDS[:2])), **({"mode": "base"} if flag else {}))
    with pytest.raises(ConfigError, match="fewer than k=3"):
        run_pipeline(cfg, _no_engine, log=lambda _: None)
    assert not (tmp / "out.jsonl").exists() and not (tmp / "out.jsonl.manifest.json").exists()


def test_run_is_a_bare_engine_subcommand():
    from bare_engine.cli import main

    result = CliRunner().invoke(main, ["run", "--print-config", "--num", "5"])
    assert result.exit_code == 0 and "num: 5" in result.stdout


def test_help_lists_the_flags():
    result = CliRunner().invoke(run_command, ["--help"])
    assert result.exit_code == 0
    for flag in ("--base", "--instruct", "--seeds", "--num", "--out", "--mode", "--seed", "--k",
                 "--max-num-seqs", "--num-kv-blocks", "--device", "--dtype", "--print-config"):
        assert flag in result.output
