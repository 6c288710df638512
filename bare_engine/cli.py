"""The ``bare-engine`` command line."""

from __future__ import annotations

import json
import sys
import typing

import click

from bare_engine.errors import BareEngineError


class _Group(click.Group):
    """Turns bare_engine errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BareEngineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="bare-engine")
def main() -> None:
    """bare-engine: synthetic data from a few examples (BARE: base model generates, instruct model refines)."""


def engine_options(fn):
    """A click option for every engine setting (``bare_engine.config``): ``--max-num-seqs`` for max_num_seqs."""
    from bare_engine.config import engine_options as settings, setting_types

    types = setting_types()
    for f in reversed(settings()):
        fn = _setting_option(f, types[f.name])(fn)
    return fn


def _setting_option(f, hint):
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata["help"] + ("" if f.default is None else f" [default: {f.default}]")
    if bool in typing.get_args(hint) or hint is bool:  # unset (None): the setting's own default
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    kind = next((k for k in (int, float) if k is hint or k in typing.get_args(hint)), str)
    return click.option(flag, f.name, type=kind, default=None, help=help_text)


def engine_config_from(kwargs: dict):
    """Pop the engine settings from a command's arguments; those given make its EngineConfig."""
    from bare_engine.config import EngineConfig, engine_options as settings

    given = {f.name: kwargs.pop(f.name) for f in settings()}
    return EngineConfig(**{name: value for name, value in given.items() if value is not None})


@main.command()
@click.option("--model", required=True, type=click.Path(), help="Model directory in Hugging Face layout.")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt text; repeat for a batch.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 means greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=-1, show_default=True)
@click.option("--min-p", type=float, default=0.0, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--presence-penalty", type=float, default=0.0, show_default=True)
@click.option("--frequency-penalty", type=float, default=0.0, show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--stop", multiple=True, help="Stop string; repeatable.")
@click.option("--seed", type=int, default=None)
@click.option("--n", type=int, default=1, show_default=True, help="Samples per prompt.")
@click.option("--ignore-eos", is_flag=True)
@click.option("--logprobs", type=int, default=None, help="Return the top-N logprobs of each token.")
@click.option("--sampling-step", "sampling_steps", multiple=True, metavar="NAME=VALUE",
              help="A named sampling step, e.g. top_n_sigma=1.0 (repeatable, applied in order).")
@click.option("--logits-processor", "logits_processors", multiple=True, metavar="MODULE:FUNCTION",
              help="A logits processor fn(output_ids, logits) (repeatable, applied in order).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per prompt instead of plain text.")
@engine_options
def generate(model, prompts, as_json, **kwargs):
    """Generate continuations of one or more prompts."""
    from bare_engine.llm import LLM
    from bare_engine.sampling_params import SamplingParams
    from bare_engine.sample.sampling_steps import parse_step_assignments

    config = engine_config_from(kwargs)
    steps = parse_step_assignments(kwargs.pop("sampling_steps")) or None
    processors = list(kwargs.pop("logits_processors")) or None
    params = SamplingParams(stop=list(kwargs.pop("stop")) or None, sampling_steps=steps,
                            logits_processors=processors, **kwargs)
    llm = LLM(model, config)
    errors = []
    for prompt, out in zip(prompts, llm.generate(list(prompts), params, use_tqdm=False)):
        for completion in out.outputs:
            if completion.error:  # a logits processor failed for this sample: the others still print
                errors.append(completion.error)
            if as_json:
                click.echo(json.dumps({"prompt": prompt, "index": completion.index, "text": completion.text,
                                       "token_ids": completion.token_ids, "finish_reason": completion.finish_reason}))
            else:
                click.echo(completion.text)
    if errors:
        click.echo(f"error: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), err=True)
        sys.exit(1)


@main.command()
@click.option("--base", type=click.Path(), default=None, help="Base model directory, served as 'base'.")
@click.option("--instruct", type=click.Path(), default=None, help="Instruct model directory, served as 'instruct'.")
@click.option("--model", "named_models", multiple=True, metavar="NAME=DIR", help="Serve DIR as NAME; repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port (printed at start).")
@click.option("--api-key", default=None, envvar="BARE_ENGINE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 routes.")
@click.option("--max-waiting", type=int, default=256, show_default=True,
              help="Waiting sequences allowed; past it new requests get a 503.")
@click.option("--shutdown-timeout", type=float, default=30.0, show_default=True,
              help="Seconds in-flight requests get to finish on SIGTERM before they are aborted.")
@click.option("--max-body-bytes", type=int, default=16 * 1024 * 1024, show_default=True,
              help="Largest request body; larger ones get a 413 before they are read.")
@click.option("--max-prompt-chars", type=int, default=1_000_000, show_default=True,
              help="Longest prompt text (all prompts or messages of a request); longer ones get a 400 "
                   "before tokenizing.")
@click.option("--limit-concurrency", type=int, default=1024, show_default=True,
              help="Open connections served at once; past it new ones get a 503.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level.")
@click.option("--generation-config", type=click.Choice(["auto", "vllm"]), default="auto", show_default=True,
              help="auto: sampling fields a request leaves unset come from the model's generation_config.json; "
                   "vllm: SamplingParams' own defaults.")
@engine_options
def serve(base, instruct, named_models, host, port, api_key, max_waiting, shutdown_timeout, max_body_bytes,
          max_prompt_chars, limit_concurrency, log_level, generation_config, **kwargs):
    """OpenAI-compatible server (/v1/completions, /v1/chat/completions); with no model flags, the demo pair."""
    from bare_engine.serve.limits import ServeLimits
    from bare_engine.serve.server import model_dirs, run_server

    config = engine_config_from(kwargs)
    limits = ServeLimits(max_body_bytes=max_body_bytes, max_prompt_chars=max_prompt_chars,
                         limit_concurrency=limit_concurrency)
    run_server(model_dirs(base, instruct, named_models), config, host, port, api_key, max_waiting,
               shutdown_timeout, log_level, generation_config, limits)


def _register_feature_commands() -> None:
    """Commands that live beside their feature's code."""
    from bare_engine.bench.cli import bench
    from bare_engine.eval.cli import eval_command, export_command
    from bare_engine.pipeline.cli import run_command

    for command in (run_command, eval_command, export_command, bench):
        main.add_command(command)


_register_feature_commands()
