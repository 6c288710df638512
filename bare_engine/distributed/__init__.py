"""Tensor parallelism inside a node: one process per rank, rank 0 the driver.

- ``group.py``: the engine's own store and process group (gloo on CPU, NCCL on CUDA)
- ``layers.py``: Megatron-layout sharded layers and each rank's checkpoint slices
- ``message.py``: a step's inputs as one flat tensor message
- ``worker.py``: the worker process (ranks 1..N-1)
- ``executor.py``: the driver's handle on its workers: start, commands, failure detection, shutdown
"""
