"""Load a Hugging Face safetensors checkpoint straight into the engine's modules.

Tensors are read one at a time (single file or sharded with an index), renamed to
the engine's fused modules, cast and copied into place. Every parameter must be
written exactly once and every checkpoint tensor must land somewhere. A
tensor-parallel rank reads only its slice of each tensor (``get_slice``), as its
layer's ``placement`` says, so a checkpoint is read once in all, not once per rank.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open

from bare_engine.model.config import ModelConfig, read_json
from bare_engine.model.layers.linear import SINGLE_RANK
from bare_engine.model.layers.linear import Placement, replicated_placement
from bare_engine.errors import CheckpointError
from bare_engine.model.decoder import CausalLM

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
NAN_SAMPLE = 4096  # elements of each tensor checked for NaN (a strided sample: no extra pass over the weights)

# Tensors some checkpoints carry that the engine recomputes or does not need.
IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.rotary_emb\.)")

# (checkpoint name, this rank's slice of the tensor, where the slice lies in the full tensor) -> tensor
TensorHook = Callable[[str, torch.Tensor, Placement], torch.Tensor]


def load_model(
    config: ModelConfig,
    weights_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    max_positions: int,
    hook: TensorHook | None = None,
    group=SINGLE_RANK,
) -> CausalLM:
    """Build ``group``'s shard of the model on ``device`` and fill it from the checkpoint."""
    check_size_against_checkpoint(config, weights_dir)  # before allocating anything the config asks for
    with torch.device(device):
        model = CausalLM(config, max_positions=max_positions, group=group)
    model.to(dtype=dtype)
    model.rotary.to(torch.float32)  # cos/sin tables stay float32, cast per use
    load_weights(model, weights_dir, hook)
    model.pack_weights()
    return model.eval()


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise CheckpointError(f"shard {missing[0]} listed in {index.name} is missing from {model_dir}")
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors weights in {model_dir}")
    return files


class _TensorSlice:
    """One checkpoint tensor, not read yet: its shape, and a read of any part of it."""

    def __init__(self, path: Path, name: str, handle):
        self.path = path
        self.name = name
        self.handle = handle
        self.shape = tuple(handle.get_shape())
        self.dtype = handle.get_dtype()  # safetensors' name: F32, BF16, I64, ...

    def read(self, index: tuple[slice, ...]) -> torch.Tensor:
        try:
            return self.handle[index]
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read safetensors file {self.path.name}: {exc}") from None


def config_num_parameters(config: ModelConfig) -> int:
    """Parameters the config describes (weights only, no biases or norms): what the model will allocate."""
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    attention = h * hd * (2 * config.num_heads + 2 * config.num_kv_heads)
    per_layer = attention + 3 * h * inter
    embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return config.num_layers * per_layer + embeddings


def check_size_against_checkpoint(config: ModelConfig, weights_dir: Path) -> None:
    """CheckpointError when config.json describes a model over twice the size the checkpoint holds (e.g. a
    num_hidden_layers typo): the allocation would fail or exhaust memory before any tensor is compared."""
    described, stored = config_num_parameters(config), checkpoint_num_parameters(weights_dir)
    if described > 2 * stored:  # a few missing tensors are named precisely by load_weights instead
        raise CheckpointError(
            f"{config.path / 'config.json'} describes a model of {described:,} parameters "
            f"({config.num_layers} layers, hidden size {config.hidden_size}, vocabulary {config.vocab_size}) "
            f"but the checkpoint in {weights_dir} holds {stored:,}; the config does not belong to these weights"
        )


def checkpoint_num_parameters(model_dir: Path) -> int:
    """Parameters stored in a checkpoint (read from the headers only)."""
    return sum(math.prod(t.shape) for _, t in iter_tensor_slices(checkpoint_files(Path(model_dir))))


def iter_tensor_slices(files: list[Path]) -> Iterator[tuple[str, _TensorSlice]]:
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                entries = [(name, _TensorSlice(path, name, f.get_slice(name))) for name in f.keys()]
                yield from entries
        except SafetensorError as exc:
            raise CheckpointError(f"corrupt or truncated safetensors file {path.name}: {exc}") from None
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read safetensors file {path.name}: {exc}") from None


def load_weights(model: CausalLM, model_dir: Path, hook: TensorHook | None = None) -> None:
    """Fill ``model``'s parameters from the checkpoint in ``model_dir``; ``hook`` may rewrite each tensor (LoRA merge)."""
    params = dict(model.named_parameters())
    expected = set(_checkpoint_names(model, params))
    tied = model.config.tie_word_embeddings

    for hf_name, tensor_slice in iter_tensor_slices(checkpoint_files(model_dir)):
        if IGNORED.search(hf_name) or (tied and hf_name == "lm_head.weight"):
            continue
        name, shard = _engine_name(model, hf_name)
        if name not in params:
            raise CheckpointError(f"unexpected tensor {hf_name!r} in checkpoint (no such parameter in {model.config.architecture})")
        param = params[name]
        place = _placement(model, name, shard, param)
        if tensor_slice.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"tensor {hf_name!r} has dtype {tensor_slice.dtype}; weights must be floating point "
                                  f"({', '.join(FLOAT_DTYPES)})")
        if tensor_slice.shape != place.full_shape:
            raise CheckpointError(f"tensor {hf_name!r} has shape {tensor_slice.shape}, expected {place.full_shape}")
        tensor = tensor_slice.read(place.index)
        _check_values(hf_name, tensor)
        if hook is not None:
            tensor = hook(hf_name, tensor, place)
        target = param.data.narrow(0, place.offset, tensor.shape[0])
        if tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(f"slice of tensor {hf_name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        target.copy_(tensor.to(dtype=target.dtype))
        expected.discard(hf_name)

    if expected:
        missing = sorted(expected)
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"checkpoint {model_dir} is missing tensor(s) {', '.join(missing[:3])}{more}")


def _check_values(hf_name: str, tensor: torch.Tensor) -> None:
    """CheckpointError when a strided sample of the tensor holds NaN (a broken or all-NaN checkpoint)."""
    flat = tensor.reshape(-1)
    sample = flat[:: max(1, flat.numel() // NAN_SAMPLE)]
    if sample.numel() and torch.isnan(sample.float()).any():
        raise CheckpointError(f"tensor {hf_name!r} holds NaN values; the checkpoint is broken")


def _placement(model: CausalLM, name: str, shard: int | None, param: torch.Tensor) -> Placement:
    """This rank's slice of the checkpoint tensor for ``name`` (the whole tensor for replicated parameters)."""
    module_name, leaf = name.rsplit(".", 1)
    module = model.get_submodule(module_name)
    if hasattr(module, "placement"):
        return module.placement(leaf, shard)
    return replicated_placement(tuple(param.shape))


def _checkpoint_names(model: CausalLM, params: dict) -> list[str]:
    """The checkpoint tensor names that fill ``params`` (fused parameters come from several)."""
    unfused = {}
    for hf_module, (fused, shard) in model.packed_modules.items():
        unfused.setdefault(fused, []).append((shard, hf_module))
    names = []
    for name in params:
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in unfused:
            names.extend(".".join(parts[:-2] + [m, parts[-1]]) for _, m in sorted(unfused[parts[-2]]))
        else:
            names.append(name)
    return names


def _engine_name(model: CausalLM, hf_name: str) -> tuple[str, int | None]:
    parts = hf_name.split(".")
    if len(parts) >= 2 and parts[-2] in model.packed_modules:
        fused, shard = model.packed_modules[parts[-2]]
        return ".".join(parts[:-2] + [fused, parts[-1]]), shard
    return hf_name, None
