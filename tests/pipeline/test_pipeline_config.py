"""Run config: file formats, precedence (defaults < file < flags), validation, resume keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bare_engine.errors import ConfigError
from bare_engine.pipeline.cli import run_command
from bare_engine.pipeline.config import (
    DEFAULT_CONFIG,
    PipelineConfig,
    config_keys,
    load_config,
    resume_key,
)


def _print_config(*args) -> dict:
    result = CliRunner().invoke(run_command, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_bundled_default_is_the_demo_bare_job():
    cfg = load_config()
    demo = DEFAULT_CONFIG.parent.parent / "demo"
    assert cfg.mode == "bare" and cfg.num == 100 and cfg.k == 3 and cfg.out == "bare_output.jsonl"
    assert Path(cfg.base) == demo / "models" / "base" and Path(cfg.instruct) == demo / "models" / "instruct"
    assert Path(cfg.seeds) == demo / "data" / "seeds.jsonl"
    assert (cfg.sampling.base.temperature, cfg.sampling.base.max_tokens) == (0.7, 1000)
    assert cfg.sampling.refine.temperature == 0.7 and cfg.sampling.instruct.temperature == 1.0


def test_toml_and_yaml_files_give_the_same_config(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('num = 7\nk = 2\nseeds = "data/s.jsonl"\nbase = "m/b"\ninstruct = "m/i"\n[sampling.base]\ntemperature = 0.9\n'
                    '[engine]\nmax_num_seqs = 3\n[templates]\nstart_marker = "<ex>"\n')
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump({"num": 7, "k": 2, "seeds": "data/s.jsonl", "base": "m/b", "instruct": "m/i", "sampling": {"base": {"temperature": 0.9}},
                                   "engine": {"max_num_seqs": 3}, "templates": {"start_marker": "<ex>"}}))
    a, b = load_config(toml), load_config(yml)
    assert a == b
    assert (a.num, a.k, a.sampling.base.temperature, a.engine.max_num_seqs, a.templates.start_marker) == (7, 2, 0.9, 3, "<ex>")
    assert a.seeds == str(tmp_path / "data" / "s.jsonl")  # relative to the config file
    assert a.out == "bare_output.jsonl"  # out stays relative to the working directory


def test_flags_override_the_file_which_overrides_defaults(tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('base = "b"\ninstruct = "i"\nseeds = "s.jsonl"\nnum = 7\nk = 2\nseed = 3\n[engine]\nmax_num_seqs = 3\ndevice = "cpu"\n'
                        '[sampling.refine]\ntemperature = 0.5\n')
    data = _print_config(str(cfg_file), "--num", "9", "--max-num-seqs", "5", "--refine-temperature", "0.25",
                         "--no-progress", "--fields", "question, answer", "--base", "rel/base")
    assert data["num"] == 9 and data["engine"]["max_num_seqs"] == 5  # flag beats file
    assert data["k"] == 2 and data["seed"] == 3 and data["engine"]["device"] == "cpu"  # file beats default
    assert data["sampling"]["refine"]["temperature"] == 0.25 and data["progress"] is False
    assert data["engine"]["dtype"] == "auto" and data["sampling"]["base"]["temperature"] == 0.7  # defaults
    assert data["base"] == "rel/base"  # a flag path is taken as given (relative to the cwd)


def test_every_config_key_has_its_own_flag():
    keys = config_keys()
    flags = [k.flag for k in keys]
    assert len(flags) == len(set(flags))
    assert {"base", "instruct", "seeds", "num", "out", "mode", "seed", "k", "max-num-seqs", "num-kv-blocks",
            "device", "dtype", "base-temperature", "refine-max-tokens", "start-marker"} <= set(flags)
    leaves = {k.dotted for k in keys}
    assert "engine.max_num_seqs" in leaves and "templates.field_markers" in leaves
    options = {opt for p in run_command.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    assert {f"--{f}" for f in flags} <= options


def test_printed_config_reloads_to_the_same_config(tmp_path):
    text = CliRunner().invoke(run_command, ["--print-config", "--k", "4", "--start-marker", "<<\n"]).stdout
    path = tmp_path / "dump.yaml"
    path.write_text(text)
    assert load_config(path) == load_config(None, {"k": 4, "templates.start_marker": "<<\n"})


def test_dict_and_list_flags(tmp_path):
    data = _print_config("--fields", "text", "--field-markers", '{"text": ""}', "--example", "{text}")
    assert data["fields"] == ["text"] and data["templates"]["field_markers"] == {"text": ""}
    result = CliRunner().invoke(run_command, ["--print-config", "--field-markers", "{oops"])
    assert result.exit_code != 0 and "--field-markers must be a JSON object" in result.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("nmu = 3\n", "unknown config key 'nmu' (did you mean 'num'?)"),
        ("[engine]\nmax_num_seq = 3\n", "unknown config key 'engine.max_num_seq' (did you mean 'engine.max_num_seqs'?)"),
        ('num = "ten"\n', "config key 'num' must be an integer, got 'ten'"),
        ("num = 0\n", "num must be >= 1, got 0"),
        ("k = true\n", "config key 'k' must be an integer"),
        ('mode = "fancy"\n', "mode must be one of bare, base, instruct, refine"),
        ('seed_order = "random"\n', "seed_order must be one of fixed, shuffle"),
        ("[sampling.base]\ntemperature = -1\n", "sampling.base: invalid sampling parameter: temperature"),
        ("[sampling.refine]\ntop_p = 0\n", "sampling.refine: invalid sampling parameter: top_p"),
        ('[templates]\nexample = "Q: {question} A: {solution}"\n', "templates.example refers to an unknown field {solution}"),
        ('[templates]\nbase_prompt = "{task} {shots}"\n', "templates.base_prompt refers to an unknown placeholder {shots}"),
        ('[templates]\nexample = "Q: {question"\n', "templates.example: malformed template"),
        ('fields = ["question"]\n[templates]\nexample = "Q: {question}"\n', "templates.field_markers must have one marker per field"),
        ('fields = ["a b"]\n', "must be a Python identifier"),
        ('mode = "refine"\n', "mode refine needs a candidates file"),
        ('engine = 3\n', "config key 'engine' must be a table of keys"),
        ('[engine]\ndtype = "fp8"\n', "dtype must be auto or one of"),
        ("num = [\n", "cannot parse config file"),
    ],
)
def test_bad_config_values_raise_one_line_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text('base = "b"\ninstruct = "i"\nseeds = "s.jsonl"\n' + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_mode_needs_its_models():
    with pytest.raises(ConfigError, match="mode instruct needs a instruct model"):
        load_config(None, {"mode": "instruct", "instruct": ""})
    assert load_config(None, {"mode": "base", "instruct": ""}).model_names == ["base"]


def test_resume_key_ignores_speed_settings_only():
    cfg = load_config()
    faster = dataclasses.replace(cfg, num=5, out="x.jsonl", max_in_flight=9,
                                 engine=dataclasses.replace(cfg.engine, max_num_seqs=2, num_kv_blocks=40))
    assert resume_key(faster) == resume_key(cfg)
    for changed in (dataclasses.replace(cfg, k=2), dataclasses.replace(cfg, seed=1),
                    dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, dtype="bfloat16")),
                    dataclasses.replace(cfg, templates=dataclasses.replace(cfg.templates, end_marker="</e>"))):
        assert resume_key(changed) != resume_key(cfg)
    # Sampling of a stage the mode does not run does not matter.
    base_only = dataclasses.replace(cfg, mode="base")
    other = dataclasses.replace(base_only, sampling=dataclasses.replace(cfg.sampling, refine=dataclasses.replace(
        cfg.sampling.refine, temperature=0.1)))
    assert resume_key(other) == resume_key(base_only)


def test_config_dataclass_defaults_match_the_issue():
    cfg = PipelineConfig()
    assert (cfg.mode, cfg.k, cfg.num, cfg.seed_order) == ("bare", 3, 100, "fixed")
    assert cfg.in_flight_limit == 2 * cfg.engine.max_num_seqs and cfg.candidate_limit == 2000
