"""Engine overhead on the device: wall time of ``engine.step()`` vs the device's kernel time, in
full-batch decode steps (and the step against the memory roofline).

    python benchmarks/decode_step.py --preset qwen3-0.6b --batch 256          # GPU
    python benchmarks/decode_step.py --preset tiny --batch 4 --prompt-len 16  # CPU smoke run

Wall time is measured on unprofiled steps (the engine syncs each step when it reads the
sampled tokens back); device time is the sum of the kernels' durations the profiler records
over further steps. Host time per step is their difference: the part of a step the GPU idles.
``--overlap-steps N`` also times N back-to-back decode steps with async scheduling off and on
(``async_scheduling`` in the report: the host work that overlapped steps hide; on a CPU there is
nothing to hide, so expect a ratio near 1 there).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from bare_engine import LLMEngine
from bare_engine.bench.throughput import PRESETS, device_name, peak_bandwidth, preset_model_dir
from bare_engine.bench.decode import SAMPLING, copy_bandwidth, overlapped_decode, roofline, steady_decode
from bare_engine.config import EngineConfig

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--model-root", type=Path, help="folder holding (or receiving) the preset's checkpoint")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps")
    parser.add_argument("--profile-steps", type=int, default=8, help="profiled decode steps (device time)")
    parser.add_argument("--sampling", choices=sorted(SAMPLING), default="filters")
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--overlap-steps", type=int, default=16,
                        help="decode steps timed with async scheduling off and on (0: skip)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/decode_step_<device>.json)")
    args = parser.parse_args()
    config = EngineConfig(device=args.device, max_num_seqs=args.batch, max_num_batched_tokens=args.max_num_batched_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = preset_model_dir(args.preset, args.model_root or tmp)
        engine = LLMEngine(model_dir, config)
        step = steady_decode(engine, model_dir, args.batch, args.prompt_len, args.steps,
                             profile_steps=args.profile_steps, sampling=args.sampling)
        overlap = None
        if args.overlap_steps:
            overlap = overlapped_decode(engine, model_dir, args.batch, args.prompt_len, args.overlap_steps,
                                        sampling=args.sampling)
        name = device_name(engine.device)
        report = {
            "benchmark": "decode_step",
            "device": name,
            "preset": args.preset,
            "dtype": str(engine.dtype).removeprefix("torch."),
            "engine_config": {k: v for k, v in asdict(config).items() if k != "cuda_graph_batch_sizes"},
            "versions": {"torch": torch.__version__},
            **step,
            **roofline(step, copy_bandwidth(engine.device)),
            "peak_bandwidth_Bps": peak_bandwidth(name),
            "async_scheduling": overlap,
        }
    path = args.output or RESULTS / f"decode_step_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report.get(k) for k in ("step_ms_median", "device_ms_per_step", "host_ms_per_step",
                                          "device_busy_fraction", "step_vs_roofline")}
    print(json.dumps({**summary, "async_speedup": (overlap or {}).get("async_speedup")}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
