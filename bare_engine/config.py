"""Engine configuration: every engine setting, declared once."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import torch

from bare_engine.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def setting(default, help: str, *, option: bool = True, resume_free: bool = False):
    """An engine setting. ``option``: also a command-line flag (``--max-num-seqs``) of every command that
    builds an engine and a key of the pipeline's ``[engine]`` section; ``resume_free``: changes speed,
    never which records a pipeline run writes (a run may resume with another value)."""
    return field(default=default, metadata={"help": help, "option": option, "resume_free": resume_free})


@dataclass
class EngineConfig:
    dtype: str = setting("auto", "auto, float32, bfloat16 or float16 (auto: bfloat16 on CUDA, float32 on the CPU).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    block_size: int = setting(16, "Tokens per KV cache block (a power of two).")
    num_kv_blocks: int | None = setting(None, "KV cache size in blocks (default: from memory).", resume_free=True)
    gpu_memory_utilization: float = setting(0.9, "Fraction of GPU memory the engine may use.", resume_free=True)
    max_num_seqs: int = setting(64, "Sequences in a step at most.", resume_free=True)
    max_num_batched_tokens: int = setting(2048, "Tokens in a step at most.", resume_free=True)
    max_model_len: int | None = setting(None, "Context length (default: the model's).")
    enable_prefix_caching: bool = setting(True, "Reuse the KV blocks of shared prompt prefixes.", resume_free=True)
    share_identical_models: bool = setting(
        True, "Names given the same checkpoint (BARE with one model as base and instruct) share one copy of the "
              "weights and run in the same steps.", resume_free=True)
    seed: int = setting(0, "Seed of the stream that seeds requests without a seed.", option=False)
    attention_backend: str = setting("auto", "auto, torch, cpu, triton or flash_attn.")
    sampler_backend: str = setting("auto", "auto (Triton on CUDA, the torch reference elsewhere), torch or triton.",
                                   resume_free=True)
    kv_split_ratio: float = setting(0.5, "Share of the KV budget of the first model's pool when models cannot share one.",
                                    resume_free=True)
    enforce_eager: bool = setting(False, "Do not capture CUDA graphs.", resume_free=True)
    tensor_parallel_size: int = setting(1, "Shard every model over this many GPUs (cuda:0..N-1), one process each.",
                                        resume_free=True)
    cuda_graph_batch_sizes: tuple[int, ...] = setting((1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                                                      "Decode batch sizes to capture CUDA graphs for.", option=False)
    # Overlapped steps (engine/steps.py): True on CPU runs the same code path, which is how the tests check it.
    async_scheduling: bool | None = setting(None, "Overlap host work with the device's step (default: on for CUDA, "
                                                  "off on the CPU, where there is nothing to overlap).", resume_free=True)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"invalid engine config: {msg}")

        if self.dtype != "auto" and self.dtype not in DTYPES:
            bad(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            bad(f"block_size must be a power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            bad(f"num_kv_blocks must be positive, got {self.num_kv_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            bad(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_num_seqs < 1:
            bad(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            bad(f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}")
        if self.sampler_backend not in ("auto", "torch", "triton"):
            bad(f"sampler_backend must be auto, torch or triton, got {self.sampler_backend!r}")
        if not 0.0 < self.kv_split_ratio < 1.0:
            bad(f"kv_split_ratio must be in (0, 1), got {self.kv_split_ratio}")
        if not isinstance(self.tensor_parallel_size, int) or self.tensor_parallel_size < 1:
            bad(f"tensor_parallel_size must be a positive integer, got {self.tensor_parallel_size!r}")
        if self.async_scheduling not in (None, True, False):
            bad(f"async_scheduling must be true, false or null (auto), got {self.async_scheduling!r}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device {self.device!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} requested but CUDA is not available")
        return device

    def rank_devices(self) -> list[torch.device]:
        """The device of each tensor-parallel rank: cuda:0..N-1 of the visible GPUs, or the CPU N times."""
        tp = self.tensor_parallel_size
        device = self.resolve_device()
        if tp == 1:
            return [device]
        if device.index is not None:
            raise ConfigError(
                f"tensor_parallel_size {tp} puts rank r on cuda:r; device must be auto, cuda or cpu, got {self.device!r}"
            )
        if device.type == "cuda":
            visible = torch.cuda.device_count()
            if tp > visible:
                raise ConfigError(f"tensor_parallel_size {tp} needs {tp} GPUs but {visible} are visible")
            return [torch.device("cuda", r) for r in range(tp)]
        return [device] * tp

    def resolve_async_scheduling(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.async_scheduling is None else self.async_scheduling

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def engine_options() -> list[dataclasses.Field]:
    """The settings that are flags and pipeline config keys, in declaration order."""
    return [f for f in dataclasses.fields(EngineConfig) if f.metadata["option"]]


def setting_types() -> dict[str, object]:
    """Each setting's type annotation, resolved."""
    return typing.get_type_hints(EngineConfig)
