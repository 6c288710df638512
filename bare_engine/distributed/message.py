"""A step's inputs as one flat int64 tensor, sent to every worker as raw bytes.

Layout: ``[kind, model index, number of fields, (dtype code, rows, cols) per field, payload...]``.
Every field is an integer tensor of at most two dimensions (token ids, positions, slot mapping,
block tables, context lengths, ...), carried as int64 and cast back on arrival; plain ints travel
as 0-d tensors and None as an empty field. No pickled Python object: the message is as long as
the step's tensors. ``step_fields`` / ``step_inputs`` fix which fields a step has and their order.
"""

from __future__ import annotations

import dataclasses

import torch

from bare_engine.attention import AttentionMetadata

KIND_STEP = 1
_DTYPES = (torch.int64, torch.int32, torch.bool)
_CODES = {dtype: code for code, dtype in enumerate(_DTYPES)}
_NONE = -1
_HEADER = 3
_FIELD = 3
_META_FIELDS = [f.name for f in dataclasses.fields(AttentionMetadata)]


def step_fields(input_ids, positions, logits_indices, meta: AttentionMetadata) -> list:
    return [input_ids, positions, logits_indices, *(getattr(meta, name) for name in _META_FIELDS)]


def step_inputs(fields: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """``(input_ids, positions, logits_indices, meta)`` from decoded ``fields``."""
    input_ids, positions, logits_indices, *rest = fields
    return input_ids, positions, logits_indices, AttentionMetadata(**dict(zip(_META_FIELDS, rest)))


def encode_step(model_index: int, fields: list) -> bytes:
    """The step of model ``model_index`` with input ``fields`` (integer tensors, ints, bools or None, in order)."""
    header = [KIND_STEP, model_index, len(fields)]
    payload = []
    for value in fields:
        if value is None:
            header += [_NONE, 0, 0]
            continue
        t = value.cpu() if isinstance(value, torch.Tensor) else torch.tensor(value)
        if t.dim() > 2:
            raise ValueError(f"step message fields have at most 2 dimensions, got shape {tuple(t.shape)}")
        rows = t.shape[0] if t.dim() >= 1 else -1  # -1: a 0-d tensor
        cols = t.shape[1] if t.dim() == 2 else -1
        header += [_CODES[t.dtype], rows, cols]
        payload.append(t.reshape(-1).to(torch.int64))
    message = torch.cat([torch.tensor(header, dtype=torch.int64), *payload])
    return message.numpy().tobytes()


def decode_step(data: bytes | bytearray, device: torch.device) -> tuple[int, list]:
    """``(model index, fields)`` of an encoded step: tensors on ``device`` in their own dtypes, scalars as ints."""
    flat = torch.frombuffer(bytearray(data), dtype=torch.int64)
    kind, model_index, num_fields = flat[:_HEADER].tolist()
    if kind != KIND_STEP:
        raise ValueError(f"not a step message (kind {kind})")
    specs = flat[_HEADER : _HEADER + _FIELD * num_fields].view(num_fields, _FIELD).tolist()
    on_device = flat.to(device)
    offset = _HEADER + _FIELD * num_fields
    fields = []
    for code, rows, cols in specs:
        if code == _NONE:
            fields.append(None)
        elif rows < 0:  # a scalar: read on the host, no device sync
            value = flat[offset].item()
            fields.append(bool(value) if _DTYPES[code] is torch.bool else value)
            offset += 1
        else:
            shape = (rows,) if cols < 0 else (rows, cols)
            numel = rows * (1 if cols < 0 else cols)
            fields.append(on_device[offset : offset + numel].view(shape).to(_DTYPES[code]))
            offset += numel
    return model_index, fields
