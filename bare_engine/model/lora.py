"""PEFT LoRA adapters, merged into the base weights while a checkpoint loads.

An adapter directory holds adapter_config.json and adapter_model.safetensors. Its tensors are
named after the PEFT-wrapped model (`base_model.model.<module>.lora_A.weight`, ...); the engine
loader calls `merge(hf_name, weight)` with the base checkpoint's names
(`model.layers.0.self_attn.q_proj.weight`) and gets back W + scale * B @ A. A tensor-parallel
rank passes its slice of W and where the slice lies (`Placement`), and gets the same slice of
the merged weight: only that block of B @ A is computed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bare_engine.model.layers.linear import Placement
from bare_engine.errors import CheckpointError, ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.weight)?$")
# Config flags whose adapters cannot be folded into plain weights, or that we do not implement.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA",
    "lora_bias": "lora_bias",
    "use_qalora": "QALoRA",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters",
    "trainable_token_indices": "trainable_token_indices",
}


def is_lora_adapter(path: str | Path) -> bool:
    """True when `path` is a PEFT adapter directory rather than a full checkpoint."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


@dataclass
class _LoraPair:
    a: torch.Tensor  # (r, in) for linear layers, (r, num_embeddings) for embeddings
    b: torch.Tensor  # (out, r) for linear layers, (dim, r) for embeddings
    embedding: bool


@dataclass
class LoraAdapter:
    path: Path
    r: int
    lora_alpha: float
    target_modules: list[str] | str | None
    use_rslora: bool
    fan_in_fan_out: bool
    base_model_name_or_path: str | None
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, _LoraPair] = field(default_factory=dict)  # module name -> (A, B)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)  # hf name -> full tensor
    _used: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def from_dir(cls, path: str | Path) -> "LoraAdapter":
        path = Path(path)
        config = _read_config(path)
        adapter = cls(
            path=path,
            r=int(config.get("r", 8)),
            lora_alpha=float(config.get("lora_alpha", 8)),
            target_modules=config.get("target_modules"),
            use_rslora=bool(config.get("use_rslora", False)),
            fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
            base_model_name_or_path=config.get("base_model_name_or_path"),
            alpha_pattern=dict(config.get("alpha_pattern") or {}),
        )
        adapter._load_tensors(_read_tensors(path))
        return adapter

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        halves: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            name = key.removeprefix(_PEFT_PREFIX)
            match = _LORA_KEY.match(name)
            if match:
                halves.setdefault(match["module"], {})[match["part"]] = tensor
            else:
                # modules_to_save copies and saved embedding layers: whole replacement tensors.
                self.replacements[name.replace(".base_layer.", ".")] = tensor
        for module, parts in halves.items():
            embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
            a = parts.get("lora_embedding_A" if embedding else "lora_A")
            b = parts.get("lora_embedding_B" if embedding else "lora_B")
            if a is None or b is None or a.shape[0] != b.shape[1]:
                raise CheckpointError(f"{self.path}: LoRA tensors of {module} are incomplete or of mismatched rank")
            self.pairs[module] = _LoraPair(a, b, embedding)

    def scale(self, module: str) -> float:
        rank = self.pairs[module].a.shape[0]  # per-module rank (rank_pattern) is the tensor's
        alpha = self.lora_alpha
        for pattern, value in self.alpha_pattern.items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    def delta(self, module: str, index: tuple[slice, slice] = (slice(None), slice(None))) -> torch.Tensor:
        """``(scale * B @ A)[index]`` in float32, laid out like the base weight."""
        pair = self.pairs[module]
        rows, cols = index
        if pair.embedding or self.fan_in_fan_out:  # the weight is (B @ A).T
            delta = (pair.b[cols].float() @ pair.a[:, rows].float()).T
        else:
            delta = pair.b[rows].float() @ pair.a[:, cols].float()
        return delta * self.scale(module)

    def delta_shape(self, module: str) -> tuple[int, int]:
        pair = self.pairs[module]
        shape = (pair.b.shape[0], pair.a.shape[1])
        return shape[::-1] if pair.embedding or self.fan_in_fan_out else shape

    def merge(self, hf_name: str, weight: torch.Tensor, place: Placement | None = None) -> torch.Tensor:
        """`weight` with this adapter applied; unchanged when the adapter does not touch it.

        With ``place``, ``weight`` is the slice ``place.index`` of a tensor of shape ``place.full_shape``.
        """
        full_shape = tuple(weight.shape) if place is None else place.full_shape
        index = tuple(slice(None) for _ in full_shape) if place is None else place.index
        if hf_name in self.replacements:
            self._used.add(hf_name)
            self._checked(hf_name, tuple(self.replacements[hf_name].shape), full_shape)
            weight = self.replacements[hf_name][index].to(weight)
        module = hf_name.removesuffix(".weight")
        if hf_name == module or module not in self.pairs:
            return weight
        self._used.add(module)
        self._checked(hf_name, self.delta_shape(module), full_shape)
        delta = self.delta(module, index)
        return (weight.float() + delta.to(weight.device)).to(weight.dtype)

    def _checked(self, hf_name: str, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> None:
        if tuple(shape) != tuple(base_shape):
            raise CheckpointError(
                f"{self.path}: adapter gives {hf_name} shape {tuple(shape)}, base has {tuple(base_shape)}"
            )

    def check_all_used(self) -> None:
        """Raise when some adapter tensors matched no base weight (wrong base model or names)."""
        unused = sorted((set(self.pairs) | set(self.replacements)) - self._used)
        if unused:
            shown = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
            raise CheckpointError(f"{self.path}: adapter weights match no base weight: {shown}")


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no {ADAPTER_CONFIG}, not a PEFT adapter directory") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path / ADAPTER_CONFIG}: invalid JSON ({exc})") from None
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ModelLoadError(f"{path}: adapter type {peft_type} is not supported, only LoRA")
    for flag, name in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            raise ModelLoadError(f"{path}: {name} adapters are not supported, only plain LoRA")
    return config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        other = " (adapter_model.bin found: convert it to safetensors)" if (path / "adapter_model.bin").exists() else ""
        raise CheckpointError(f"{path}: no {ADAPTER_WEIGHTS}{other}")
    try:
        return load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: cannot read ({exc})") from None
