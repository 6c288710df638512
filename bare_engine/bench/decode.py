"""Steady decode steps of a full batch: time per step against the memory roofline, and how
much of a step is host work (wall time) vs device work (kernel time, from the profiler).

Uses only the engine's public API: requests in, ``step()``, ``stats`` to tell prefill steps
from decode steps, ``abort_request`` to stop early (and ``set_async_scheduling`` to time
overlapped steps against synchronous ones).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path

import torch

from bare_engine.model.config import load_model_config
from bare_engine.sampling_params import SamplingParams

SAMPLING = {
    "greedy": dict(temperature=0.0),
    # Every filter and penalty on: the Triton sampler's full path.
    "filters": dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                    frequency_penalty=0.2, presence_penalty=0.1),
}


def weight_bytes(model_dir: str | Path, dtype: torch.dtype) -> int:
    """Bytes of every weight in the engine's dtype: what a decode step reads at least once."""
    from safetensors import safe_open

    numel = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                numel += math.prod(f.get_slice(name).get_shape())
    return numel * dtype.itemsize


def kv_bytes_per_token(model_dir: str | Path, dtype: torch.dtype) -> int:
    c = load_model_config(model_dir)
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * dtype.itemsize


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Measured device-to-device copy bandwidth, bytes read plus written per second (None on CPU)."""
    if device.type != "cuda":
        return None
    import triton

    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _counters(engine, model: str) -> tuple[int, int]:
    s = engine.stats[model]
    return s.prompt_tokens, s.generated_tokens


def steady_decode(
    engine,
    model_dir: str | Path,
    batch: int,
    prompt_len: int,
    steps: int,
    warmup: int = 3,
    profile_steps: int = 0,
    sampling: str = "greedy",
    seed: int = 0,
) -> dict:
    """Fill the engine with ``batch`` requests of ``prompt_len`` random tokens, run past their
    prefill, then time ``steps`` decode steps in which all ``batch`` sequences decode (and
    profile ``profile_steps`` more). Aborts the requests afterwards."""
    model = engine.model_names[0]
    device, dtype = engine.device, engine.dtype
    ids = _add_requests(engine, model_dir, batch, prompt_len, warmup + steps + profile_steps, sampling, seed)
    start_generated = _counters(engine, model)[1]
    timed: list[tuple[float, int]] = []  # (wall seconds, tokens generated before the step)
    device_us, profiled = 0.0, 0
    try:
        while engine.has_unfinished_requests() and len(timed) < warmup + steps:
            before = _counters(engine, model)
            t0 = time.perf_counter()
            engine.step()
            _sync(device)
            wall = time.perf_counter() - t0
            after = _counters(engine, model)
            if after[0] == before[0] and after[1] - before[1] == batch:  # a pure decode step of the full batch
                timed.append((wall, before[1] - start_generated))
        if profile_steps and engine.has_unfinished_requests():
            device_us, profiled = _profile_steps(engine, model, batch, profile_steps)
    finally:
        for rid in ids:
            engine.abort_request(rid)
    timed = timed[warmup:]
    if not timed:
        raise RuntimeError(f"no decode step of the full batch of {batch} ran (max_num_seqs too small?)")
    walls = [w for w, _ in timed]
    step_s = statistics.median(walls)
    context_tokens = batch * prompt_len + statistics.median(g for _, g in timed)
    moved = weight_bytes(model_dir, dtype) + kv_bytes_per_token(model_dir, dtype) * context_tokens
    result = {
        "batch": batch, "prompt_len": prompt_len, "sampling": sampling, "decode_steps_timed": len(walls),
        "step_ms_median": _sig(step_s * 1e3), "step_ms_min": _sig(min(walls) * 1e3),
        "decode_tokens_per_s": _sig(batch / step_s),
        "context_tokens_per_step": int(context_tokens), "bytes_per_step": int(moved),
    }
    if profile_steps and not device_us:
        result["profiler_note"] = "no device kernel time recorded (CPU run, or the profiler saw no kernels)"
    if profiled and device_us:
        device_ms = device_us / profiled / 1e3
        result.update(device_ms_per_step=_sig(device_ms), profiled_steps=profiled,
                      host_ms_per_step=_sig(max(step_s * 1e3 - device_ms, 0.0)),
                      device_busy_fraction=_sig(device_ms / (step_s * 1e3)))
    return result


def _add_requests(engine, model_dir, batch: int, prompt_len: int, decode_steps: int, sampling: str,
                  seed: int) -> list[str]:
    """``batch`` requests of ``prompt_len`` random tokens that run past their prefill plus ``decode_steps``."""
    vocab = load_model_config(model_dir).vocab_size
    rng = random.Random(seed)
    prefill_steps = -(-batch * prompt_len // engine.config.max_num_batched_tokens)
    params = SamplingParams(max_tokens=2 * prefill_steps + decode_steps + 8, ignore_eos=True, seed=seed,
                            **SAMPLING[sampling])
    ids = [f"steady-{seed}-{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, [rng.randrange(3, vocab) for _ in range(prompt_len)], params,
                           model=engine.model_names[0])
    return ids


def overlapped_decode(engine, model_dir, batch: int, prompt_len: int, steps: int, sampling: str = "greedy",
                      seed: int = 1) -> dict:
    """Wall time of ``steps`` back-to-back full-batch decode steps with overlapped steps (async scheduling)
    off, then on, on the same engine; one device sync per run, so the overlap shows. Leaves the
    engine's setting as it found it."""
    model = engine.model_names[0]
    was = engine.async_scheduling
    result = {"batch": batch, "prompt_len": prompt_len, "steps": steps, "sampling": sampling}
    try:
        for overlapped in (False, True):
            engine.set_async_scheduling(overlapped)
            ids = _add_requests(engine, model_dir, batch, prompt_len, 2 * steps + 4, sampling, seed)
            try:
                full = 0
                while full < 2:  # past the prefill (and the first decode, which may share a step with it)
                    before = _counters(engine, model)
                    engine.step()
                    after = _counters(engine, model)
                    full = full + 1 if after[0] == before[0] and after[1] - before[1] == batch else 0
                _sync(engine.device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    engine.step()
                _sync(engine.device)
                wall = time.perf_counter() - t0
                if _counters(engine, model) != (after[0], after[1] + steps * batch):
                    raise RuntimeError("a timed step was not a full-batch decode step")
            finally:
                for rid in ids:
                    engine.abort_request(rid)
            result["async_step_ms" if overlapped else "sync_step_ms"] = _sig(wall / steps * 1e3)
    finally:
        engine.set_async_scheduling(was)
    result["async_speedup"] = _sig(result["sync_step_ms"] / result["async_step_ms"])
    return result


def _profile_steps(engine, model: str, batch: int, steps: int) -> tuple[float, int]:
    """Kernel time (µs, summed over the device's activity records) of ``steps`` full decode steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ran = 0
    with profile(activities=activities) as prof:
        for _ in range(steps):
            before = _counters(engine, model)
            engine.step()
            after = _counters(engine, model)
            if after[0] != before[0] or after[1] - before[1] != batch:
                ran = 0  # not a full decode step: its kernels would skew the per-step time
                break
            ran += 1
        _sync(engine.device)
    if not cuda or not ran:
        return 0.0, 0
    busy = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    return float(busy), ran


def roofline(step: dict, bandwidth: float | None) -> dict:
    """The step's bytes over ``bandwidth`` (bytes/s) against its measured time."""
    if not bandwidth:
        return {}
    ms = step["bytes_per_step"] / bandwidth * 1e3
    return {"roofline_bandwidth_Bps": _sig(bandwidth), "roofline_ms": _sig(ms),
            "step_vs_roofline": _sig(step["step_ms_median"] / ms)}


def _sig(value: float) -> float:
    return float(f"{value:.4g}")
