"""The BARE pipeline: few-shot base generation, instruct refinement, resumable output."""

from bare_engine.pipeline.config import PipelineConfig, load_config
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates

__all__ = ["DEFAULT_TASK", "PipelineConfig", "Templates", "load_config", "run_pipeline"]


def __getattr__(name):
    # run_pipeline pulls in tqdm/transformers lazily; `import bare_engine.pipeline` stays light.
    if name == "run_pipeline":
        from bare_engine.pipeline.run import run_pipeline

        return run_pipeline
    raise AttributeError(name)
