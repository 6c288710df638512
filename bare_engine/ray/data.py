"""`PipelineStage`: the pipeline's generate, refine or annotate as a Ray Data stage.

    ds.map_batches(PipelineStage, fn_constructor_kwargs={"config": "job.toml", "overrides": {...}},
                   concurrency=N, num_gpus=tp, batch_size=64)

Each actor of the pool loads one engine; each batch runs through the pipeline's own planner
and StageChain, so a row's output equals what `bare-engine run` writes for it. What a row is
depends on the config's mode:

- ``annotate``: an unlabeled example with the ``input_fields`` (the dataset replaces ``input``);
  out: ``<label_field>`` (None when unlabeled) and ``label_prob``.
- ``refine``: a candidate with the ``fields`` (the dataset replaces ``candidates``).
- ``bare`` / ``base`` / ``instruct``: one candidate to generate; only its index matters
  (``ray.data.range(n)`` gives the column ``id``: pass ``index_column="id"``).

Every row keeps its columns and gains the output fields (None when the candidate was
dropped), ``drop_reason`` and ``record`` (the pipeline's JSON record; None when dropped).
Candidate i is seeded from (seed, i): i is the row's ``index_column`` when the dataset has
one, else a hash of the row's input fields, so the output never depends on batching.
"""

from __future__ import annotations

import hashlib
import json

from bare_engine.pipeline.config import PipelineConfig, load_config
from bare_engine.pipeline.seeds import Example

DATASET_INPUT = "<ray dataset>"  # stands for the input file: the rows come from the dataset
INPUT_KEYS = {"annotate": "input", "refine": "candidates"}


class PipelineStage:
    def __init__(self, config: str | None = None, overrides: dict | None = None, index_column: str = "index",
                 cpu_threads: int | None = 1):
        """`config`: a TOML/YAML file as for `bare-engine run` (None: the bundled default);
        `overrides`: dotted config keys, as flags would set them. On CPU the engine uses
        `cpu_threads` torch threads (one per actor by default)."""
        import torch

        from bare_engine.pipeline.run import build_engine

        # The dataset stands in for the input file of annotate and refine modes.
        cfg = load_config(config, {**{key: DATASET_INPUT for key in INPUT_KEYS.values()}, **(overrides or {})})
        if cpu_threads and not torch.cuda.is_available():
            torch.set_num_threads(cpu_threads)
        self.cfg, self.index_column = cfg, index_column
        make_planner = _planner_factory(cfg)
        self.engine = build_engine(cfg)
        self._make_planner = lambda inputs: make_planner(self.engine, inputs)

    def __call__(self, batch: dict) -> dict:
        from bare_engine.pipeline.runner import StageChain

        rows = _rows(batch)
        indices = [self._index(row) for row in rows]
        planner = self._make_planner(self._inputs(rows, indices))
        chain = StageChain(self.engine, planner, self.cfg.stages)
        resolved = {}
        for index in indices:
            cand = chain.start(planner.candidate(index))
            if cand is not None:
                resolved[index] = cand
        while chain.active:
            for cand in chain.step():
                resolved[cand.index] = cand
        return self._columns(batch, [resolved[i] for i in indices], planner)

    def _index(self, row: dict) -> int:
        if self.index_column in row:
            return int(row[self.index_column])
        fields = {name: _plain(row.get(name)) for name in self._input_fields()}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:6], "little")

    def _input_fields(self) -> list[str]:
        return self.cfg.input_fields if self.cfg.mode == "annotate" else self.cfg.fields

    def _inputs(self, rows: list[dict], indices: list[int]) -> dict[int, Example] | None:
        if self.cfg.mode not in INPUT_KEYS:
            return None
        names = self._input_fields()
        missing = [name for name in names if name not in rows[0]]
        if missing:
            from bare_engine.errors import ConfigError

            raise ConfigError(f"dataset rows have no column {missing[0]!r} (mode {self.cfg.mode} reads {names})")
        examples = {}
        for row, index in zip(rows, indices):
            example_id = _plain(row.get(self.cfg.id_field, index)) if self.cfg.mode == "annotate" else index
            examples[index] = Example(example_id, {name: str(_plain(row[name])) for name in names})
        return examples

    def _columns(self, batch: dict, cands: list, planner) -> dict:
        import numpy as np

        out = {name: np.asarray(values) for name, values in batch.items()}
        annotate = self.cfg.mode == "annotate"
        names = [self.cfg.label_field] if annotate else self.cfg.fields
        for name in names:
            out[name] = _objects([(c.fields or {}).get(name) if c.valid else None for c in cands])
        records = [planner.record(c, c.index) if c.valid else None for c in cands]
        if annotate:
            out["label_prob"] = _objects([r["label_prob"] if r else None for r in records])
        out["drop_reason"] = _objects([c.drop_reason for c in cands])
        out["record"] = _objects([json.dumps(r, ensure_ascii=False) if r else None for r in records])
        return out


def _planner_factory(cfg: PipelineConfig):
    """(engine, inputs) -> the pipeline's planner over `inputs` ({candidate index: Example},
    which planner.candidate(i) looks rows up in; None in the generating modes)."""
    if cfg.mode == "annotate":
        import dataclasses

        from bare_engine.pipeline.annotate import prepare_annotate

        job = prepare_annotate(cfg, log=lambda _: None, inputs=[])
        return lambda engine, inputs: dataclasses.replace(job, inputs=inputs).planner(engine)
    from bare_engine.pipeline.run import check_models
    from bare_engine.pipeline.seeds import load_seeds
    from bare_engine.pipeline.stages import StagePlanner

    seeds = load_seeds(cfg.seeds, cfg.fields, cfg.id_field, cfg.k)
    check_models(cfg)
    return lambda engine, inputs: StagePlanner(cfg, seeds, engine.tokenizer, inputs)


def _rows(batch) -> list[dict]:
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # a pandas DataFrame
        batch = {name: batch[name].to_numpy() for name in batch.columns}
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{name: batch[name][i] for name in columns} for i in range(n)]


def _plain(value):
    """numpy scalars to Python values (for JSON and the records)."""
    return value.item() if hasattr(value, "item") else value


def _objects(values: list):
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
