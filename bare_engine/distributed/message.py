"""A step's inputs as one message of raw int32 bytes, sent to every worker.

Layout: ``[kind, model index, the 6 ints of the StepLayout]`` followed by the step's flat int32
buffer (token ids, positions, slot mapping, cu_seqlens, context lengths, sampled rows, block
tables: see ``input_batch.StepInputs``). No pickled Python object: the message is as long as the
step's tensors, and a worker rebuilds the same views with ``StepInputs.from_buffer``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bare_engine.worker.input_batch import StepInputs, StepLayout

KIND_STEP = 1
# Tensor parallel runs synchronous steps (engine/steps.py), so a worker's step never has pending tokens.
_LAYOUT_FIELDS = [f.name for f in dataclasses.fields(StepLayout) if f.name != "num_pending"]
_HEADER = 2 + len(_LAYOUT_FIELDS)


def encode_step(model_index: int, inputs: StepInputs) -> bytes:
    """The step of model ``model_index``; ``inputs`` still on the host (before its copy to the device)."""
    layout = inputs.layout
    if layout.num_pending:
        raise ValueError("a tensor-parallel step cannot have input tokens pending on the driver's device")
    header = np.array([KIND_STEP, model_index, *(getattr(layout, f) for f in _LAYOUT_FIELDS)], dtype=np.int32)
    return header.tobytes() + inputs.buffer[: layout.size].numpy().tobytes()


def decode_step(data: bytes, device: torch.device) -> tuple[int, StepInputs]:
    """``(model index, inputs on device)`` of an encoded step."""
    header = np.frombuffer(data, dtype=np.int32, count=_HEADER).tolist()
    kind, model_index, *sizes = header
    if kind != KIND_STEP:
        raise ValueError(f"not a step message (kind {kind})")
    layout = StepLayout(*sizes)
    buffer = torch.frombuffer(bytearray(data[4 * _HEADER:]), dtype=torch.int32)
    if buffer.numel() != layout.size:
        raise ValueError(f"step message holds {buffer.numel()} values, its layout {layout.size}")
    return model_index, StepInputs.from_buffer(buffer.to(device), layout)
