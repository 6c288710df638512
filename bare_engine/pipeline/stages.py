"""One candidate's requests and results: prompts, seeded sampling, parsing, the output record.

Everything about candidate i (its seed examples, each stage's sampling seed) derives only
from (run seed, i), so a record never depends on batching or arrival order.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bare_engine.pipeline.config import STAGE_MODEL, PipelineConfig
from bare_engine.pipeline.seeds import Example, load_grounding
from bare_engine.pipeline.structured import STRUCTURED_STAGES, json_instruction, parse_json_fields, structured_outputs
from bare_engine.engine.prompts import render_chat
from bare_engine.sampling_params import SamplingParams


def derive_seed(run_seed: int, index: int, purpose: str) -> int:
    """A 31-bit seed that depends only on (run seed, candidate index, purpose)."""
    digest = hashlib.sha256(f"bare-engine/{run_seed}/{index}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Candidate:
    index: int
    shots: list[Example]
    input: Example | None = None  # refine mode: the candidate read from the file
    grounding: dict[str, str] = field(default_factory=dict)  # its grounding fields (e.g. a RAFT context)
    fields: dict[str, str] | None = None  # the latest stage's parsed fields
    stages: dict[str, dict] = field(default_factory=dict)  # finished stage -> stage record
    drop_reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.drop_reason is None and self.fields is not None


def request_id(stage: str, index: int) -> str:
    return f"{stage}-{index}"


def parse_request_id(rid: str) -> tuple[str, int]:
    stage, index = rid.rsplit("-", 1)
    return stage, int(index)


class StagePlanner:
    """Builds each stage's engine request and turns its output into the candidate's state."""

    def __init__(
        self,
        cfg: PipelineConfig,
        seeds: list[Example],
        tokenizer: Callable[[str], object],
        inputs: list[Example] | None = None,
    ):
        self.cfg = cfg
        self.seeds = seeds
        self.tokenizer = tokenizer  # model name -> HF tokenizer (for chat templates)
        self.inputs = inputs
        self.grounding = load_grounding(cfg.grounding, cfg.grounding_fields) if cfg.grounding_fields else []
        self.model_labels = {name: Path(cfg.model_path(name)).name for name in cfg.model_names}

    def candidate(self, index: int) -> Candidate:
        cand = Candidate(index, self._shots(index))
        if self.grounding:
            cand.grounding = self.grounding[index % len(self.grounding)]
        if self.inputs is not None:
            cand.input = self.inputs[index]
            cand.fields = dict(cand.input.fields)
        return cand

    def _shots(self, index: int) -> list[Example]:
        k = self.cfg.k
        if self.cfg.seed_order == "fixed":
            return self.seeds[:k]
        return random.Random(derive_seed(self.cfg.seed, index, "shots")).sample(self.seeds, k)

    def request(self, cand: Candidate, stage: str) -> tuple[str, str | list[int], SamplingParams, str]:
        """(request id, prompt, params, model name) of `stage` for `cand`."""
        cfg, t = self.cfg, self.cfg.templates
        shots = [s.fields for s in cand.shots]
        seed = derive_seed(cfg.seed, cand.index, stage)
        if stage == "base":
            prompt = t.base(cfg.task, shots, cand.grounding)
            params = cfg.sampling.base.params(seed, stop=[t.stop_string])
        elif stage == "refine":
            message = t.refine(cfg.task, shots, cand.fields, cand.grounding)
            params = cfg.sampling.refine.params(seed)
        else:
            message = t.instruct(cfg.task, shots, cand.grounding)
            params = cfg.sampling.instruct.params(seed)
        if stage != "base":
            if self._structured(stage):
                message += json_instruction(cfg.fields)
                params.structured_outputs = structured_outputs(cfg.fields)
            prompt = self._chat(STAGE_MODEL[stage], message)
        return request_id(stage, cand.index), prompt, params, STAGE_MODEL[stage]

    def _structured(self, stage: str) -> bool:
        return stage in STRUCTURED_STAGES and getattr(self.cfg.sampling, stage).structured

    def _chat(self, model: str, user_message: str) -> list[int]:
        messages = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        messages.append({"role": "user", "content": user_message})
        return render_chat(self.tokenizer(model), messages)[1]

    def finish(self, cand: Candidate, stage: str, output) -> None:
        """Record a finished stage (a RequestOutput); set the parsed fields or the drop reason."""
        completion = output.outputs[0]
        prefix = self.cfg.templates.completion_prefix if stage == "base" else ""
        if self._structured(stage):
            fields, reason = parse_json_fields(completion.text, self.cfg.fields)
        else:
            fields, reason = self.cfg.templates.parse_with_reason(prefix + completion.text)
        if fields is not None and self.cfg.grounding_fields:
            given = cand.fields if stage == "refine" and cand.fields else cand.grounding
            fields = {name: given[name] if name in self.cfg.grounding_fields else fields[name] for name in self.cfg.fields}
        if completion.finish_reason in ("abort", "error"):  # error: a logits processor failed
            reason = completion.finish_reason
        elif completion.finish_reason == "length" and self.cfg.drop_truncated:
            reason = "length"
        cand.stages[stage] = {
            "model": self.model_labels[STAGE_MODEL[stage]],
            "seed": derive_seed(self.cfg.seed, cand.index, stage),
            "text": completion.text,
            "fields": fields,
            "prompt_tokens": len(output.prompt_token_ids),
            "output_tokens": len(completion.token_ids),
            "finish_reason": completion.finish_reason,
        }
        if reason is not None:
            cand.drop_reason = f"{stage}:{reason}"
            cand.fields = None
        else:
            cand.fields = fields

    def record(self, cand: Candidate, ordinal: int) -> dict:
        """The output line of a valid candidate; `ordinal` is its position in the output file."""
        record = {
            "id": ordinal,
            "candidate": cand.index,
            "mode": self.cfg.mode,
            "fields": cand.fields,
            "seed_ids": [s.id for s in cand.shots],
        }
        if cand.input is not None:
            record["input"] = {"index": cand.input.id, "fields": cand.input.fields}
        for stage in self.cfg.stages:
            record[stage] = cand.stages[stage]
        return record
