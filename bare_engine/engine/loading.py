"""Engine set-up: each named model's config, tokenizer, runner and EOS ids, and the tensor-parallel workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bare_engine.config import EngineConfig
from bare_engine.errors import ConfigError
from bare_engine.model.config import ModelConfig, load_model_config
from bare_engine.model.layers.attention import AttentionBackend, select_backend
from bare_engine.model.layers.linear import SINGLE_RANK
from bare_engine.model.source import ModelSource, ModelSpec, resolve_model_source
from bare_engine.model.tokenizer import load_tokenizer
from bare_engine.worker.model_runner import ModelRunner

DEFAULT_MODEL = "default"

ModelArg = str | Path | ModelSpec


@dataclass
class LoadedModels:
    device: torch.device
    dtype: torch.dtype
    backend: AttentionBackend
    sources: dict[str, ModelSource]  # model name -> its weights and tokenizer directories
    configs: dict[str, ModelConfig]
    max_model_len: dict[str, int]
    tokenizers: dict
    runners: dict[str, ModelRunner]
    eos_ids: dict[str, set[int]]
    tp: object | None  # the TPExecutor when tensor_parallel_size > 1
    workers_free_memory: list[int]  # each worker's free device memory after loading (tensor parallel)
    # model name -> the name whose runner serves it: itself, or the first name given the same checkpoint
    # (share_identical_models); only the latter names have pools and scheduler queues.
    step_model: dict[str, str]


def load_models(models: ModelArg | dict[str, ModelArg], config: EngineConfig) -> LoadedModels:
    """Load every model; on failure, stop any workers started and re-raise."""
    if not isinstance(models, dict):
        models = {DEFAULT_MODEL: models}
    if not models:
        raise ConfigError("no model given")
    devices = config.rank_devices()
    device = devices[0]
    dtype = config.resolve_dtype(device)
    sources = {name: resolve_model_source(spec) for name, spec in models.items()}
    configs = {name: load_model_config(s.weights_dir) for name, s in sources.items()}
    max_model_len = {name: _max_model_len(config, c) for name, c in configs.items()}
    tokenizers = _load_tokenizers(sources)
    backend = select_backend(config.attention_backend, device)
    step_model = _step_models(sources, config)
    own = {name: spec for name, spec in models.items() if step_model[name] == name}
    tp = _start_tensor_parallel(config, devices, backend, own, configs, max_model_len, dtype)
    try:
        runners = {}
        for index, name in enumerate(own):
            runners[name] = _load_runner(config, name, configs[name], sources[name], index, device, dtype,
                                         max_model_len[name], backend, tp)
        for name, target in step_model.items():
            if target != name:
                runners[name] = runners[target]
                runners[target].serve_as(name)
        eos_ids = {name: _eos_ids(c, tokenizers[name]) for name, c in configs.items()}
        free = tp.collect_loaded() if tp else []
    except BaseException:
        if tp is not None:
            tp.shutdown()
        raise
    return LoadedModels(device, dtype, backend, sources, configs, max_model_len, tokenizers, runners, eos_ids, tp, free,
                        step_model)


def _load_tokenizers(sources: dict[str, ModelSource]) -> dict:
    """Each name's tokenizer, loaded once per folder (base and instruct often share one)."""
    by_folder: dict[Path, object] = {}
    for source in sources.values():
        folder = source.tokenizer_dir.resolve()
        if folder not in by_folder:
            by_folder[folder] = load_tokenizer(source.tokenizer_dir)
    return {name: by_folder[s.tokenizer_dir.resolve()] for name, s in sources.items()}


def _step_models(sources: dict[str, ModelSource], config: EngineConfig) -> dict[str, str]:
    """Each name -> the first name with the same weights and tokenizer and no adapter (or itself)."""
    first: dict[tuple, str] = {}  # (weights, tokenizer) -> the first name loading them without an adapter
    step_model = {}
    for name, source in sources.items():
        if not config.share_identical_models or source.adapter is not None:
            step_model[name] = name
            continue
        key = (source.weights_dir.resolve(), source.tokenizer_dir.resolve())
        step_model[name] = first.setdefault(key, name)
    return step_model


def _start_tensor_parallel(config: EngineConfig, devices, backend, models: dict, configs: dict[str, ModelConfig],
                           max_model_len: dict[str, int], dtype: torch.dtype):
    """tensor_parallel_size > 1: spawn the workers (ranks 1..N-1) and have them load their shards."""
    tp = config.tensor_parallel_size
    if tp == 1:
        return None
    from bare_engine.distributed.executor import TPExecutor
    from bare_engine.distributed.worker import ModelLoad

    for name in models:
        configs[name].check_tensor_parallel(tp)
    executor = TPExecutor(devices, backend.name)
    try:
        executor.load([ModelLoad(name, spec, max_model_len[name], dtype) for name, spec in models.items()])
    except BaseException:
        executor.shutdown()
        raise
    return executor


def _load_runner(config: EngineConfig, name: str, model: ModelConfig, source: ModelSource, index: int,
                 device: torch.device, dtype: torch.dtype, max_model_len: int, backend, tp) -> ModelRunner:
    hook = source.adapter.merge if source.adapter else None
    runner = ModelRunner(
        name, model, source.weights_dir, device, dtype, max_model_len, config.max_num_seqs, backend,
        weight_hook=hook, sampler_backend=config.sampler_backend, group=tp.group if tp else SINGLE_RANK,
        tensor_parallel=tp, model_index=index,
    )
    if source.adapter:
        source.adapter.check_all_used()
    return runner


def _max_model_len(config: EngineConfig, model: ModelConfig) -> int:
    limit = model.max_position_embeddings
    wanted = config.max_model_len or limit
    if wanted > limit:
        raise ConfigError(f"max_model_len {wanted} exceeds {model.path.name}'s context of {limit} tokens")
    return wanted


def _eos_ids(model: ModelConfig, tokenizer) -> set[int]:
    ids = set(model.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
