"""The CPU linear over a decode step's rows (``kernels/cpu_linear.c``, panels) against oneDNN's
prepacked GEMM (``torch.ops.mkldnn._linear_pointwise``, what the engine used before), side by side.

    python benchmarks/cpu_linear.py                 # SmolLM2-135M's shapes, 1-512 rows, both dtypes
    python benchmarks/cpu_linear.py --rows 1 8 32 --dtype bfloat16

Each case runs one decode step's linears: a decoder's four projections (fused qkv, o, fused gate/up,
down) for every layer, with each layer's own weights so that they stream from memory as in a real
step (``--layers`` 30 of SmolLM2's are 212 MB in bfloat16, past any cache). The two alternate for
``--repeats`` rounds; the JSON holds both medians and oneDNN's time over the kernel's, per row count,
at ``benchmarks/results/cpu_linear_vs_onednn.json`` (and a plot beside it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import plotting  # benchmarks/plotting.py, beside this script
from bare_engine.kernels import cpu_linear

SMOLLM2_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of qkv, o, gate_up, down


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(dtype: torch.dtype, rows: list[int], layers: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    weights = [[(torch.randn(n, k, generator=gen) * 0.05).to(dtype) for n, k in SMOLLM2_SHAPES] for _ in range(layers)]
    panels = [[cpu_linear.pack(w) for w in layer] for layer in weights]
    onednn = [[torch.ops.mkldnn._reorder_linear_weight(w, 64) for w in layer] for layer in weights]
    results = []
    for m in rows:
        inputs = [torch.randn(m, k, generator=gen).to(dtype) for _, k in SMOLLM2_SHAPES]

        def ours():
            for layer in panels:
                for x, w in zip(inputs, layer):
                    cpu_linear.linear(x, w)

        def theirs():
            for layer in onednn:
                for x, w in zip(inputs, layer):
                    torch.ops.mkldnn._linear_pointwise.default(x, w, None, "none", [], "")

        ours(), theirs()  # warm-up
        kernel, baseline = [], []
        for _ in range(repeats):
            kernel.append(timed(ours))
            baseline.append(timed(theirs))
        flops = 2 * m * layers * sum(n * k for n, k in SMOLLM2_SHAPES)
        k_ms, b_ms = statistics.median(kernel) * 1e3, statistics.median(baseline) * 1e3
        results.append({"rows": m, "kernel_ms": round(k_ms, 3), "onednn_ms": round(b_ms, 3),
                        "onednn_over_kernel": round(b_ms / k_ms, 3), "kernel_gflops": round(flops / k_ms / 1e6, 1)})
        print(f"{str(dtype)[6:]:9s} {m:4d} rows: kernel {k_ms:7.2f} ms, oneDNN {b_ms:7.2f} ms, "
              f"oneDNN / kernel {b_ms / k_ms:.2f}", flush=True)
    return results


def plot(report: dict, path: Path) -> None:
    """oneDNN's time over the kernel's against the row count, a line per dtype, when matplotlib is installed."""
    made = plotting.axes()
    if made is None:
        return
    fig, ax = made
    for name, rows in report["results"].items():
        ax.plot([r["rows"] for r in rows], [r["onednn_over_kernel"] for r in rows], "o-", label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.axvline(cpu_linear.ROW_LIMIT, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rows in the step (dotted: the engine's limit for the kernel)")
    ax.set_ylabel("oneDNN time / kernel time")
    ax.set_title(f"SmolLM2-135M's linears, {report['layers']} layers, {report['threads']} CPU threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 256, 512])
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_linear_vs_onednn.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
              "layers": args.layers, "shapes": SMOLLM2_SHAPES, "results": {}}
    for name in args.dtype:
        dtype = getattr(torch, name)
        if not cpu_linear.supported(dtype):
            print(f"{name}: the kernel does not run on this CPU (needs AVX-512, and AVX512-BF16 for bfloat16)")
            continue
        report["results"][name] = measure(dtype, args.rows, args.layers, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
