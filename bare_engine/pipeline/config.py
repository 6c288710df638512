"""Run configuration: defaults < config file (TOML or YAML) < CLI flags.

Every leaf key is also a CLI flag (see `config_keys`): top-level keys, `[engine]` and
`[templates]` keys keep their name (`--max-num-seqs`, `--start-marker`); stage sampling
keys get the stage as prefix (`[sampling.base] temperature` -> `--base-temperature`).
Relative input paths in a config file are resolved against the file's folder; `out`
(and every path given as a flag) is relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bare_engine.config import EngineConfig, engine_options, setting_types
from bare_engine.errors import ConfigError, InvalidSamplingParamsError
from bare_engine.pipeline.annotate_prompt import DEFAULT_ANNOTATE_TEMPLATE, DEFAULT_STOP, validate_annotate
from bare_engine.pipeline.presets import preset_file
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates
from bare_engine.sampling_params import SamplingParams

MODES = ("bare", "base", "instruct", "refine", "annotate")
SEED_ORDERS = ("fixed", "shuffle")
INPUT_PATH_KEYS = ("base", "instruct", "seeds", "candidates", "teacher", "teacher_base", "input", "grounding")
DEFAULT_CONFIG = Path(__file__).with_name("default.toml")

# Which stages each mode runs, in order, and which model each stage uses.
MODE_STAGES = {
    "bare": ("base", "refine"), "base": ("base",), "instruct": ("instruct",), "refine": ("refine",),
    "annotate": ("annotate",),
}
STAGE_MODEL = {"base": "base", "refine": "instruct", "instruct": "instruct", "annotate": "teacher"}


@dataclass
class StageSampling:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 1000
    logits_processors: list[str] | None = None  # "module:function" per processor (see logits_processors.py)
    sampling_steps: dict[str, float] | None = None  # e.g. {top_n_sigma = 1.0} (see sampling_steps.py)
    min_tokens: int = 0
    # refine / instruct: the reply is the record's fields as JSON, constrained to them (pipeline/structured.py)
    structured: bool = False

    def params(self, seed: int, stop: list[str] | None = None) -> SamplingParams:
        return SamplingParams(**self.sampling_values(), seed=seed, stop=stop)

    def sampling_values(self) -> dict:
        """The SamplingParams fields (``structured`` is not one: the stage's request gets the schema)."""
        values = dataclasses.asdict(self)
        values.pop("structured")
        return values


@dataclass
class SamplingSection:
    base: StageSampling = field(default_factory=lambda: StageSampling(temperature=0.7))
    refine: StageSampling = field(default_factory=lambda: StageSampling(temperature=0.7))
    instruct: StageSampling = field(default_factory=lambda: StageSampling(temperature=1.0))
    annotate: StageSampling = field(default_factory=lambda: StageSampling(temperature=0.0, max_tokens=256))


def _engine_section() -> type:
    """The ``[engine]`` section: EngineConfig's settings that are options (bare_engine/config.py), with
    their defaults (the engine seed is the run seed)."""
    types = setting_types()
    fields = [(f.name, types[f.name], field(default=f.default, metadata=f.metadata)) for f in engine_options()]
    section = dataclasses.make_dataclass("EngineSection", fields)
    section.__module__ = __name__
    section.__doc__ = "EngineConfig settings the pipeline passes through (the engine seed is the run seed)."
    return section


EngineSection = _engine_section()


@dataclass
class PipelineConfig:
    preset: str | None = None  # a BARE paper task (pipeline/presets/); the config file and flags override it
    mode: str = "bare"
    base: str | None = None  # base model directory
    instruct: str | None = None  # instruct model directory
    seeds: str | None = None  # seed examples (JSONL)
    grounding: str | None = None  # JSONL whose rows ground the candidates (row i % rows for candidate i)
    grounding_fields: list[str] = field(default_factory=list)  # fields taken from `grounding`, not generated
    candidates: str | None = None  # refine mode: JSONL of candidates to refine
    out: str = "bare_output.jsonl"
    num: int = 100
    seed: int = 0
    k: int = 3
    fields: list[str] = field(default_factory=lambda: ["question", "answer"])
    id_field: str = "id"  # seed field used as the seed's id (line number when absent)
    seed_order: str = "fixed"  # fixed: the first k seeds; shuffle: k seeds drawn per candidate
    task: str = DEFAULT_TASK
    system_prompt: str = ""  # optional system message for the chat stages
    drop_truncated: bool = True  # drop outputs that hit max_tokens
    max_in_flight: int = 0  # candidates in flight at once; 0: 2 * max_num_seqs
    max_candidates: int = 0  # give up after this candidate index; 0: max(100, 20 * num)
    progress: bool = True
    data_parallel: int = 1  # engine replicas on Ray (bare_engine/ray); >1 or a ray_address runs on Ray
    ray_address: str = ""  # join this Ray cluster (host:port or auto); "": start a local Ray
    # annotate mode (see pipeline/annotate.py and annotate_prompt.py)
    teacher: str | None = None  # teacher model directory, or a LoRA adapter directory
    teacher_base: str | None = None  # base model of a LoRA adapter teacher (default: its adapter_config)
    input: str | None = None  # unlabeled examples (JSONL)
    input_fields: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    labels: list[str] | None = None  # the label set; leave out for a generation task
    # how the output is held to the label set: "trie" (the labels' own tokens) or "choice" (structured outputs)
    label_constraint: str = "trie"
    annotate_template: str = DEFAULT_ANNOTATE_TEMPLATE  # {task} {labels} {examples} {input}
    annotate_example: str = ""  # one example, ending with {<label_field>}; "": "Name: {field}" lines
    stop: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))  # generation tasks' stop strings
    sampling: SamplingSection = field(default_factory=SamplingSection)
    templates: Templates = field(default_factory=Templates)
    engine: EngineSection = field(default_factory=EngineSection)

    @property
    def stages(self) -> tuple[str, ...]:
        return MODE_STAGES[self.mode]

    @property
    def model_names(self) -> list[str]:
        return sorted({STAGE_MODEL[s] for s in self.stages})

    def model_path(self, name: str) -> str:
        return getattr(self, name)

    @property
    def in_flight_limit(self) -> int:
        return self.max_in_flight or 2 * self.engine.max_num_seqs

    @property
    def candidate_limit(self) -> int:
        return self.max_candidates or max(100, 20 * self.num)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ConfigKey:
    path: tuple[str, ...]
    hint: object  # the type annotation

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        if self.path[0] == "sampling":
            return f"{self.path[1]}-{self.path[2]}".replace("_", "-")
        return self.path[-1].replace("_", "-")


def config_keys(cls: type = PipelineConfig, prefix: tuple[str, ...] = ()) -> list[ConfigKey]:
    """Every leaf key of the config, in declaration order."""
    hints = typing.get_type_hints(cls)
    keys: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += config_keys(hint, prefix + (f.name,))
        else:
            keys.append(ConfigKey(prefix + (f.name,), hint))
    return keys


def load_config(path: str | Path | None = None, overrides: dict[str, object] | None = None) -> PipelineConfig:
    """The validated config: defaults, then the file (bundled default when None), then `overrides`
    (dotted key -> value, e.g. from CLI flags)."""
    data = PipelineConfig().to_dict()
    file_data = _read_file(Path(path) if path is not None else DEFAULT_CONFIG)
    preset = (overrides or {}).get("preset", file_data.get("preset"))
    layers = [file_data] if preset is None else (
        [file_data, _read_file(preset_file(preset))] if path is None else [_read_file(preset_file(preset)), file_data]
    )
    for layer in layers:  # a preset lies under a config file, over the bundled default
        _merge(data, layer, ())
    for dotted, value in (overrides or {}).items():
        _merge(data, _nest(dotted.split("."), value), ())
    cfg = from_dict(data)
    validate(cfg)
    return cfg


def from_dict(data: dict) -> PipelineConfig:
    return _build(PipelineConfig, data, ())


def _read_file(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {file}: {e.strerror or e}") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        first_line = str(e).strip().splitlines()[0]
        raise ConfigError(f"cannot parse config file {file}: {first_line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a table of keys")
    for key in INPUT_PATH_KEYS:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str(_resolve(data[key], file.parent))
    return data


def _resolve(value: str, folder: Path) -> Path:
    return Path(os.path.abspath(folder / Path(value).expanduser()))


def _nest(path: list[str], value: object) -> dict:
    return {path[0]: value} if len(path) == 1 else {path[0]: _nest(path[1:], value)}


def _merge(into: dict, new: dict, prefix: tuple[str, ...]) -> None:
    for key, value in new.items():
        dotted = ".".join(prefix + (str(key),))
        if key not in into:
            known = [".".join(prefix + (k,)) for k in into]
            close = difflib.get_close_matches(dotted, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        section = isinstance(into[key], dict) and key not in ("field_markers", "sampling_steps")
        if section:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a table of keys")
            _merge(into[key], value, prefix + (key,))
        else:
            into[key] = value


def _build(cls: type, data: dict, prefix: tuple[str, ...]):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint, path = hints[f.name], prefix + (f.name,)
        value = data[f.name]
        kwargs[f.name] = _build(hint, value, path) if dataclasses.is_dataclass(hint) else coerce(path, value, hint)
    return cls(**kwargs)


def coerce(path: tuple[str, ...], value: object, hint: object) -> object:
    """Check (and lightly convert) one value against its annotation; ConfigError when it does not fit."""
    key = ".".join(path)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must be set")
    origin = typing.get_origin(hint) or hint

    def bad(kind: str) -> typing.NoReturn:
        raise ConfigError(f"config key '{key}' must be {kind}, got {value!r}")

    if origin is bool:
        return value if isinstance(value, bool) else bad("true or false")
    if origin is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else bad("an integer")
    if origin is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else bad("a number")
    if origin is str:
        return value if isinstance(value, str) else bad("a string")
    if origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return list(value) if ok else bad("a list of strings")
    if origin is dict and typing.get_args(hint)[1:] == (float,):
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items())
        return {k: float(v) for k, v in value.items()} if ok else bad("a table of numbers")
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        return dict(value) if ok else bad("a table of strings")
    raise AssertionError(f"unhandled config type {hint} for {key}")


def validate(cfg: PipelineConfig) -> None:
    """Value checks that need no files or models."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.seed_order not in SEED_ORDERS:
        raise ConfigError(f"seed_order must be one of {', '.join(SEED_ORDERS)}, got {cfg.seed_order!r}")
    for key, minimum in (("num", 1), ("k", 1), ("seed", 0), ("max_in_flight", 0), ("max_candidates", 0),
                         ("data_parallel", 1)):
        if getattr(cfg, key) < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {getattr(cfg, key)}")
    if not cfg.fields:
        raise ConfigError("fields must name at least one field")
    for name in cfg.fields:
        if not name.isidentifier():
            raise ConfigError(f"field name {name!r} must be a Python identifier (it is a template placeholder)")
    if len(set(cfg.fields)) != len(cfg.fields):
        raise ConfigError(f"fields has duplicates: {cfg.fields}")
    for name in cfg.model_names:
        if not cfg.model_path(name):
            raise ConfigError(f"mode {cfg.mode} needs a {name} model (set '{name}' or --{name})")
    if not cfg.seeds:
        raise ConfigError("no seeds file given (set 'seeds' or --seeds)")
    if cfg.mode == "annotate":
        validate_annotate(cfg)
    if cfg.mode == "refine" and not cfg.candidates:
        raise ConfigError("mode refine needs a candidates file (set 'candidates' or --candidates)")
    if not cfg.out:
        raise ConfigError("out must be a file path")
    engine_config(cfg)  # EngineConfig checks the engine section's values
    unknown = [f for f in cfg.grounding_fields if f not in cfg.fields]
    if unknown:
        raise ConfigError(f"grounding_fields names {unknown[0]!r}, which is not one of the fields {cfg.fields}")
    if cfg.grounding_fields and not cfg.grounding:
        raise ConfigError("grounding_fields needs a grounding file (set 'grounding' or --grounding)")
    cfg.templates.validate(cfg.fields, cfg.grounding_fields)
    for stage in ("base", "refine", "instruct", "annotate"):
        try:
            getattr(cfg.sampling, stage).params(seed=0)
        except InvalidSamplingParamsError as e:
            raise ConfigError(f"sampling.{stage}: {e}") from None
        if getattr(cfg.sampling, stage).structured and stage not in ("refine", "instruct"):
            raise ConfigError(f"sampling.{stage}.structured: only the refine and instruct stages can be structured")


# Keys that change only speed or bookkeeping, never which records a run writes: a run
# may be resumed with different values. Model paths and input files are compared
# through their content fingerprints (see manifest.py), not their paths.
RESUME_FREE_KEYS = {
    "num", "out", "progress", "max_in_flight", "max_candidates", "preset",
    "data_parallel", "ray_address",
    "base", "instruct", "seeds", "candidates", "teacher", "teacher_base", "input",
    *(f"engine.{f.name}" for f in engine_options() if f.metadata["resume_free"]),
}
# Keys only annotate mode reads: part of its resume key only (older manifests lack them).
ANNOTATE_KEYS = {"input_fields", "label_field", "labels", "annotate_template", "annotate_example", "stop",
                 "label_constraint"}
# Keys added after manifests were written: left out of the resume key at their default, so those runs resume.
LATER_KEY_DEFAULTS = {"label_constraint": "trie"}


def engine_config(cfg: PipelineConfig) -> EngineConfig:
    """The run's EngineConfig: the [engine] section, seeded with the run seed."""
    return EngineConfig(**dataclasses.asdict(cfg.engine), seed=cfg.seed)


def resume_key(cfg: PipelineConfig) -> dict[str, object]:
    """The flat {dotted key: value} of every key that shapes the records of this mode."""
    data = cfg.to_dict()
    flat = {}
    for key in config_keys():
        if key.dotted in RESUME_FREE_KEYS or (key.dotted in ANNOTATE_KEYS and cfg.mode != "annotate"):
            continue
        if key.dotted in LATER_KEY_DEFAULTS and getattr(cfg, key.dotted) == LATER_KEY_DEFAULTS[key.dotted]:
            continue
        if key.path[0] == "sampling" and key.path[1] not in cfg.stages:
            continue
        value = data
        for part in key.path:
            value = value[part]
        flat[key.dotted] = value
    return flat
