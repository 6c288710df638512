"""Benchmark the Triton paged-attention kernels against torch SDPA (and flash-attn when importable).

    python benchmarks/attention.py            # GPU: decode and prefill sweeps
    python benchmarks/attention.py --quick    # tiny smoke run, works on CPU (Triton interpreter)
    python benchmarks/attention.py --decode-cases 64x4096 --prefill-cases 8x2048   # chosen BATCHxCONTEXT cases

Every case gives each sequence the same context; the block table is a random permutation
of cache blocks. Baselines run on K/V already gathered into contiguous tensors (the gather
is not timed), so they are the best case for torch. Bandwidth counts the bytes a kernel
must move at least (K/V read once, q read, output written) against the device's peak.
Results go to benchmarks/results/attention_<device>[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import triton  # noqa: E402

from bare_engine.kernels.attention import decode_attention, default_num_splits, prefill_attention  # noqa: E402
from bare_engine.bench.throughput import device_name, peak_bandwidth  # noqa: E402
from bare_engine.kernels.attention_ref import gather_kv  # noqa: E402

# (substring of torch.cuda.get_device_name(), peak bytes/s); the first match wins, so more
# specific names come first ("NVIDIA H100 80GB HBM3" is the SXM part).

FULL = {
    "decode": {"batch": [1, 16, 64, 256], "context": [128, 1024, 4096, 8192]},
    "prefill": {"batch": [1, 8, 64], "context": [128, 1024, 4096, 8192], "max_tokens": 131072},
}
QUICK = {
    "decode": {"batch": [1, 4], "context": [128, 256]},
    "prefill": {"batch": [1, 2], "context": [40, 96], "max_tokens": 256},
}


def time_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up: compile / first-call costs stay out of the timing
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def paged_cache(batch, context, num_kv_heads, head_dim, block_size, dtype, device, seed=0):
    """Random K/V caches holding `batch` sequences of `context` tokens in shuffled blocks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = triton.cdiv(context, block_size)
    shape = (batch * blocks_per_seq, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    v_cache = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    order = torch.randperm(shape[0], generator=gen, device=device)
    tables = order.view(batch, blocks_per_seq).to(torch.int32)
    context_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    return k_cache, v_cache, tables, context_lens


def load_flash_attn():
    try:
        import flash_attn

        return flash_attn
    except Exception:  # not installed, or built for another torch/CUDA
        return None


def run_decode(batch, context, args, device, flash_attn):
    k_cache, v_cache, tables, ctx = paged_cache(
        batch, context, args.kv_heads, args.head_dim, args.block_size, args.dtype, device
    )
    q = torch.randn(batch, args.heads, args.head_dim, device=device, dtype=args.dtype)
    scale = args.head_dim**-0.5
    splits = default_num_splits(batch, args.kv_heads, tables.shape[1] * args.block_size, _num_sms(device))
    k = gather_kv(k_cache, tables, context).transpose(1, 2).contiguous()  # [B, Hkv, L, D]
    v = gather_kv(v_cache, tables, context).transpose(1, 2).contiguous()

    def triton_fn():
        return decode_attention(q, k_cache, v_cache, tables, ctx, scale)

    def sdpa_fn():
        return _sdpa(q[:, :, None], k, v, scale, causal=False)[:, :, 0]

    element = q.element_size()
    moved = 2 * batch * context * args.kv_heads * args.head_dim * element + 2 * q.numel() * element
    result = {"batch": batch, "context": context, "num_splits": splits}
    result.update(_measure("triton", triton_fn, moved, device))
    result.update(_measure("sdpa", sdpa_fn, moved, device))
    result["max_abs_err_vs_sdpa"] = (triton_fn().float() - sdpa_fn().float()).abs().max().item()
    if flash_attn is not None:
        k_nhd, v_nhd = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()  # [B, L, Hkv, D]
        def flash_fn():
            return flash_attn.flash_attn_with_kvcache(q[:, None], k_nhd, v_nhd, cache_seqlens=ctx, softmax_scale=scale)

        result.update(_measure("flash_attn", flash_fn, moved, device))
    return result


def run_prefill(batch, context, args, device, flash_attn):
    k_cache, v_cache, tables, ctx = paged_cache(
        batch, context, args.kv_heads, args.head_dim, args.block_size, args.dtype, device
    )
    q = torch.randn(batch * context, args.heads, args.head_dim, device=device, dtype=args.dtype)
    cu = torch.arange(0, batch + 1, device=device, dtype=torch.int32) * context
    scale = args.head_dim**-0.5
    k = gather_kv(k_cache, tables, context).transpose(1, 2).contiguous()  # [B, Hkv, L, D]
    v = gather_kv(v_cache, tables, context).transpose(1, 2).contiguous()
    q_bhld = q.view(batch, context, args.heads, args.head_dim).transpose(1, 2)

    def triton_fn():
        return prefill_attention(q, k_cache, v_cache, tables, cu, ctx, scale)

    def sdpa_fn():
        return _sdpa(q_bhld, k, v, scale, causal=True).transpose(1, 2).reshape(q.shape)

    element = q.element_size()
    moved = (2 * q.numel() + 2 * batch * context * args.kv_heads * args.head_dim) * element
    flops = 4 * batch * args.heads * args.head_dim * context * (context + 1) / 2  # causal QK^T and PV
    result = {"batch": batch, "context": context}
    for name, fn in [("triton", triton_fn), ("sdpa", sdpa_fn)]:
        result.update(_measure(name, fn, moved, device, flops))
    result["max_abs_err_vs_sdpa"] = (triton_fn().float() - sdpa_fn().float()).abs().max().item()
    if flash_attn is not None:
        k_nhd = k.transpose(1, 2).reshape(-1, args.kv_heads, args.head_dim)
        v_nhd = v.transpose(1, 2).reshape(-1, args.kv_heads, args.head_dim)
        result.update(_measure(
            "flash_attn",
            lambda: flash_attn.flash_attn_varlen_func(
                q, k_nhd, v_nhd, cu, cu, context, context, softmax_scale=scale, causal=True
            ),
            moved, device, flops,
        ))
    return result


def _sdpa(q, k, v, scale, causal):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        return sdpa(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
    except TypeError:  # torch < 2.5: materialise the shared heads
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return sdpa(q, k, v, is_causal=causal, scale=scale)


def _measure(name, fn, moved_bytes, device, flops=None):
    ms = time_ms(fn, device)
    out = {f"{name}_ms": _sig(ms), f"{name}_GBps": _sig(moved_bytes / ms / 1e6)}
    peak = peak_bandwidth(device_name(device))
    if peak:
        out[f"{name}_bw_fraction"] = _sig(moved_bytes / (ms * 1e-3) / peak)
    if flops:
        out[f"{name}_TFLOPs"] = _sig(flops / ms / 1e9)
    return out


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _cases(text: str) -> list[tuple[int, int]]:
    try:
        cases = [tuple(int(x) for x in case.split("x")) for case in text.split(",")]
    except ValueError:
        cases = []
    if not cases or any(len(c) != 2 or min(c) < 1 for c in cases):
        raise argparse.ArgumentTypeError(f"expected BATCHxCONTEXT[,BATCHxCONTEXT...], got {text!r}")
    return cases


def _sweep_cases(sweep: dict) -> list[tuple[int, int]]:
    return [(b, c) for b in sweep["batch"] for c in sweep["context"] if b * c <= sweep.get("max_tokens", math.inf)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, runs on CPU through the Triton interpreter")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--only", choices=["decode", "prefill"], help="run one of the two sweeps")
    parser.add_argument("--decode-cases", type=_cases, help="BATCHxCONTEXT[,...] instead of the decode sweep")
    parser.add_argument("--prefill-cases", type=_cases, help="BATCHxCONTEXT[,...] instead of the prefill sweep")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--output", type=Path, help="JSON file (default: attention_<device>.json under --out)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick and device.type == "cpu":
        args.heads, args.kv_heads, args.head_dim = 8, 2, 64
    if device.type == "cpu" and args.dtype == "bfloat16":
        args.dtype = "float32"  # the interpreter's bfloat16 dot is not trustworthy (see kernels/attention.py)
    args.dtype = getattr(torch, args.dtype)
    sweeps = QUICK if args.quick else FULL
    flash_attn = load_flash_attn() if device.type == "cuda" else None

    name = device_name(device)
    report = {
        "device": name,
        "peak_bandwidth_Bps": peak_bandwidth(name),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flash_attn": getattr(flash_attn, "__version__", None),
        "shape": {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                  "block_size": args.block_size, "dtype": str(args.dtype).removeprefix("torch.")},
        "decode": [],
        "prefill": [],
    }
    for kind, run in [("decode", run_decode), ("prefill", run_prefill)]:
        if args.only and args.only != kind:
            continue
        for batch, context in getattr(args, f"{kind}_cases") or _sweep_cases(sweeps[kind]):
            row = run(batch, context, args, device, flash_attn)
            report[kind].append(row)
            print(kind, json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    path = args.output or args.out / f"attention_{slug}{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
