"""bare-engine: a small inference engine for Base-Refine synthetic data generation."""

from bare_engine.config import EngineConfig
from bare_engine.engine.llm_engine import LLMEngine
from bare_engine.errors import BareEngineError
from bare_engine.llm import LLM
from bare_engine.model.source import ModelSpec
from bare_engine.outputs import CompletionOutput, RequestOutput
from bare_engine.sampling_params import SamplingParams
from bare_engine.structured import StructuredOutputsParams

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "LLMEngine",
    "EngineConfig",
    "ModelSpec",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "BareEngineError",
]
