"""Data parallelism on Ray: engine replicas as Ray actors, and a Ray Data stage.

- ``cluster.py``: importing Ray, joining or starting a cluster (bounded), the resource check
- ``replica.py``: one engine replica (a Ray actor): runs chunks of candidate indices
- ``driver.py``: ``bare-engine run --data-parallel N``: the work queue, records in index order,
  replica failures
- ``data.py``: ``PipelineStage``, a callable class for ``ray.data.Dataset.map_batches``

Ray is imported lazily (``pip install -e ".[ray]"``); importing this package does not need it.
"""

from bare_engine.ray.data import PipelineStage

__all__ = ["PipelineStage"]
