"""Engine vs transformers generate() throughput; same as `bare-engine bench`.

    python benchmarks/throughput.py --preset cpu-50m --workload both
"""

from bare_engine.cli import bench

if __name__ == "__main__":
    bench()
