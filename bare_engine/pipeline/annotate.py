"""Annotate mode: a (fine-tuned) teacher labels unlabeled examples, one record per input line.

Classification (config `labels` set): the output is constrained to the label set through the
sampler's allowed-token mask (a token trie, so multi-token labels work; or, with
`label_constraint = "choice"`, a structured-outputs choice over any tokenization) and the record holds
the label and its probability under that constrained distribution (greedy by default:
sampling.annotate.temperature = 0). Generation (no `labels`): free text up to a stop string.

Record: {"id": input id (its `id_field`, else its position), "candidate": input index,
"mode": "annotate", "fields": {input fields..., label_field: label}, "label", "label_prob",
"seed_ids", "annotate": {model, seed, text, prompt_tokens, output_tokens, finish_reason}}.
A generation cut by max_tokens (with drop_truncated) or an empty one keeps its record with
"label": null and no label in "fields", so exports skip it. Only a prompt too long for the
teacher's context drops the line (counted as annotate:prompt_too_long).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bare_engine.errors import ConfigError
from bare_engine.model.source import ModelSpec, resolve_model_source
from bare_engine.model.lora import is_lora_adapter
from bare_engine.pipeline.annotate_prompt import AnnotatePrompt, label_token_ids, match_label
from bare_engine.pipeline.config import STAGE_MODEL, PipelineConfig
from bare_engine.utils.jsonl import read_jsonl_rows
from bare_engine.pipeline.seeds import Example, _fields, load_seeds
from bare_engine.pipeline.stages import Candidate, StagePlanner, derive_seed, request_id
from bare_engine.sampling_params import SamplingParams
from bare_engine.structured import StructuredOutputsParams
from bare_engine.model.tokenizer import load_tokenizer

STAGE = "annotate"


def load_inputs(path: str | Path, fields: list[str], id_field: str) -> list[Example]:
    """The unlabeled examples; an example's id is its `id_field` value, else its position."""
    rows = read_jsonl_rows(path, "input")
    inputs = []
    for n, (line_no, row) in enumerate(rows):
        example_id = row.get(id_field, n)
        if not isinstance(example_id, (str, int)) or isinstance(example_id, bool):
            raise ConfigError(f"input file {path} line {line_no}: id field '{id_field}' must be a string or integer")
        inputs.append(Example(example_id, _fields(row, fields, path, line_no, "input")))
    return inputs


def teacher_spec(cfg: PipelineConfig) -> ModelSpec:
    """The teacher as the engine loads it; ConfigError when the folder is neither a model nor an adapter."""
    path = Path(cfg.teacher)
    adapter = is_lora_adapter(path)
    if not adapter and not (path / "config.json").is_file():
        raise ConfigError(f"teacher model not found: {path} has no config.json or adapter_config.json")
    if cfg.teacher_base and not adapter:
        raise ConfigError(f"teacher_base is only for a LoRA adapter teacher, but {path} is a full model")
    return ModelSpec(path, base=cfg.teacher_base)


@dataclass
class AnnotateJob:
    cfg: PipelineConfig  # num capped at the number of input lines
    seeds: list[Example]
    inputs: list[Example]
    prompt: AnnotatePrompt
    label_ids: list[list[int]] | None  # None: a generation task
    extra_models: dict[str, Path]  # model folders to fingerprint besides the teacher (a LoRA base)

    def planner(self, engine) -> "AnnotatePlanner":
        return AnnotatePlanner(self.cfg, self.seeds, engine.tokenizer, self.inputs, self.prompt, self.label_ids)


def prepare_annotate(cfg: PipelineConfig, log: Callable[[str], None] = print,
                     inputs: list[Example] | None = None) -> AnnotateJob:
    """Read and check every input, the teacher's folder and tokenizer, and the labels; no model loads.
    `inputs`: the unlabeled examples when they do not come from the `input` file (a Ray dataset)."""
    prompt = AnnotatePrompt.from_config(cfg)
    if inputs is None:
        inputs = load_inputs(cfg.input, cfg.input_fields, cfg.id_field)
    seeds = load_seeds(cfg.seeds, prompt.seed_fields, cfg.id_field, cfg.k)
    if cfg.labels is not None:
        for seed in seeds:
            if seed.fields[cfg.label_field] not in cfg.labels:
                raise ConfigError(
                    f"seeds file {cfg.seeds}: seed {seed.id!r} has {cfg.label_field} "
                    f"{seed.fields[cfg.label_field]!r}, which is not one of the labels"
                )
    source = resolve_model_source(teacher_spec(cfg))
    label_ids = None
    if cfg.labels is not None:
        tokenizer = load_tokenizer(source.tokenizer_dir)
        label_ids = label_token_ids(tokenizer, cfg.labels, *prompt.answer_context)
    extra = {"teacher_base": source.weights_dir} if source.adapter is not None else {}
    if cfg.num < len(inputs):
        log(f"annotating the first {cfg.num} of {len(inputs)} input lines (raise num to annotate more)")
    job_cfg = dataclasses.replace(cfg, num=min(cfg.num, len(inputs)))
    return AnnotateJob(job_cfg, seeds, inputs, prompt, label_ids, extra)


class AnnotatePlanner(StagePlanner):
    """The one-stage planner of annotate mode (the runner drives it like the other modes)."""

    def __init__(self, cfg, seeds, tokenizer, inputs, prompt: AnnotatePrompt, label_ids: list[list[int]] | None):
        super().__init__(cfg, seeds, tokenizer, inputs)
        self.prompt, self.label_ids = prompt, label_ids

    def request(self, cand: Candidate, stage: str) -> tuple[str, str, SamplingParams, str]:
        text = self.prompt.prompt([s.fields for s in cand.shots], cand.input.fields)
        params = self._params(derive_seed(self.cfg.seed, cand.index, stage))
        return request_id(stage, cand.index), text, params, STAGE_MODEL[stage]

    def _params(self, seed: int) -> SamplingParams:
        sampling = self.cfg.sampling.annotate
        if self.label_ids is None:
            return sampling.params(seed, stop=self.cfg.stop or None)
        if self.cfg.label_constraint == "choice":  # any tokenization of lead + label; a token holds >= 1 character
            values = {**sampling.sampling_values(), "max_tokens": max(map(len, self.choices)) + 1}
            return SamplingParams(**values, seed=seed, logprobs=0,
                                  structured_outputs=StructuredOutputsParams(choice=self.choices))
        longest = max(len(ids) for ids in self.label_ids)  # + 1: the end token after a prefix label
        values = {**sampling.sampling_values(), "max_tokens": longest + 1}
        return SamplingParams(**values, seed=seed, logprobs=0, allowed_token_sequences=self.label_ids)

    @property
    def choices(self) -> list[str]:
        """label_constraint "choice": each label as the teacher writes it, after the answer's lead whitespace."""
        lead = self.prompt.answer_context[1]
        return [lead + label for label in self.cfg.labels]

    def finish(self, cand: Candidate, stage: str, output) -> None:
        completion = output.outputs[0]
        label, prob = self._label(completion)
        cand.stages[stage] = {
            "model": self.model_labels[STAGE_MODEL[stage]],
            "seed": derive_seed(self.cfg.seed, cand.index, stage),
            "text": completion.text,
            "label": label,
            "label_prob": prob,
            "prompt_tokens": len(output.prompt_token_ids),
            "output_tokens": len(completion.token_ids),
            "finish_reason": completion.finish_reason,
        }
        cand.fields = dict(cand.input.fields)
        if label is not None:
            cand.fields[self.cfg.label_field] = label

    def _label(self, completion) -> tuple[str | None, float | None]:
        if self.label_ids is None:
            if completion.finish_reason == "length" and self.cfg.drop_truncated:
                return None, None
            return completion.text.strip() or None, None
        if self.cfg.label_constraint == "choice":
            index = self.choices.index(completion.text) if completion.text in self.choices else None
        else:
            index = match_label(completion.token_ids, self.label_ids)
        if index is None:
            return None, None
        # 6 significant digits: the float32 forward pass is not bit-identical across batch shapes.
        return self.cfg.labels[index], float(f"{math.exp(completion.cumulative_logprob):.6g}")

    def record(self, cand: Candidate, ordinal: int) -> dict:
        stage = dict(cand.stages[STAGE])
        label, prob = stage.pop("label"), stage.pop("label_prob")
        return {
            "id": cand.input.id,
            "candidate": cand.index,
            "mode": self.cfg.mode,
            "fields": cand.fields,
            "label": label,
            "label_prob": prob,
            "seed_ids": [s.id for s in cand.shots],
            STAGE: stage,
        }
