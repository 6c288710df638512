"""`bare-engine run [CONFIG]`: every config key is also a flag; flags override the file."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing

import click
import yaml

from bare_engine.errors import BareEngineError, ConfigError
from bare_engine.pipeline.config import ConfigKey, config_keys, coerce, load_config

EXIT_ERROR = 1  # bad input (as the bare-engine group does)
EXIT_INCOMPLETE = 3  # gave up before the target (max_candidates reached)
EXIT_INTERRUPTED = 130


class _ConfigDumper(yaml.SafeDumper):
    """Multi-line strings (templates) as literal blocks, so the dump reads like the prompts."""


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = None
    if "\n" in value:
        style = "|" if value == value.strip() else '"'  # edge newlines stay visible as \n
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _str_representer)


def dump_config(cfg) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True)


def _param_name(key: ConfigKey) -> str:
    return "cfg__" + "__".join(key.path)


def _base_type(key: ConfigKey):
    """The annotation's type without Optional; list/dict for list[str] / dict[str, str]."""
    hint = key.hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _option(key: ConfigKey) -> click.Option:
    origin = _base_type(key)
    help_text = f"config key {key.dotted}"
    if origin is bool:
        return click.Option([f"--{key.flag}/--no-{key.flag}", _param_name(key)], default=None, help=help_text)
    if origin is list:
        help_text += " (comma-separated)"
    elif origin is dict:
        help_text += " (JSON object)"
    click_type = {int: int, float: float}.get(origin, str)
    return click.Option([f"--{key.flag}", _param_name(key)], type=click_type, default=None, help=help_text)


def _flag_value(key: ConfigKey, raw: object) -> object:
    origin = _base_type(key)
    if origin is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if origin is dict:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--{key.flag} must be a JSON object ({e.msg})") from None
        return coerce(key.path, value, key.hint)
    return raw


def overrides_from_flags(params: dict) -> dict[str, object]:
    """{dotted key: value} for every flag given on the command line."""
    overrides = {}
    for key in config_keys():
        raw = params.get(_param_name(key))
        if raw is not None:
            overrides[key.dotted] = _flag_value(key, raw)
    return overrides


def _step_overrides(items: tuple[str, ...]) -> dict[str, object]:
    """--sampling-step NAME=VALUE (repeatable): the same steps for every stage."""
    if not items:
        return {}
    from bare_engine.pipeline.config import SamplingSection
    from bare_engine.sample.sampling_steps import parse_step_assignments

    steps = parse_step_assignments(items)
    return {f"sampling.{f.name}.sampling_steps": steps for f in dataclasses.fields(SamplingSection)}


def preset_table() -> str:
    from bare_engine.pipeline.presets import describe_presets

    rows = [("preset", "fields", "task")] + describe_presets()
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{name:<{width[0]}}  {fields:<{width[1]}}  {task}" for name, fields, task in rows]
    return "\n".join(lines) + "\n\nbare-engine run --preset NAME [CONFIG] [--key value ...]: the config file and flags override the preset."


def _run(config_path: str | None, print_config: bool, sampling_step: tuple[str, ...] = (), **params) -> None:
    if params.get("cfg__preset") == "list":
        click.echo(preset_table())
        return
    try:
        cfg = load_config(config_path, {**overrides_from_flags(params), **_step_overrides(sampling_step)})
        if print_config:
            click.echo(dump_config(cfg), nl=False)
            return
        from bare_engine.pipeline.progress import summary_lines
        from bare_engine.pipeline.run import run_pipeline

        result = run_pipeline(cfg, log=lambda line: click.echo(line, err=True))
    except BareEngineError as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:  # outside the generation loop: while starting up, or while shutting down after it
        click.echo("interrupted; the output keeps whole records only: run the same command again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    for line in summary_lines(result, cfg.out):
        click.echo(line, err=True)
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not result.complete and cfg.mode not in ("refine", "annotate"):  # input files bound these modes
        sys.exit(EXIT_INCOMPLETE)


run_command = click.Command(
    name="run",
    callback=_run,
    params=[
        click.Argument(["config_path"], required=False, metavar="[CONFIG]"),
        click.Option(["--print-config"], is_flag=True, help="Print the merged config (YAML) and exit."),
        click.Option(["--sampling-step", "sampling_step"], multiple=True, metavar="NAME=VALUE",
                     help="A sampling step for every stage, e.g. top_n_sigma=1.0 (repeatable; per stage: "
                          "[sampling.<stage>] sampling_steps)."),
        *(_option(key) for key in config_keys()),
    ],
    help=(
        "Generate synthetic data with BARE (base generation + instruct refinement).\n\n"
        "CONFIG is a TOML or YAML file (default: the bundled demo config). Every config key is "
        "also a flag and flags override the file. An existing output is resumed."
    ),
)


if __name__ == "__main__":
    run_command()
