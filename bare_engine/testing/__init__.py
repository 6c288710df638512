"""The public test harness: tiny offline checkpoints and tokenizers, and the check for sampling steps."""

from bare_engine.testing.models import (
    ARCH_CONFIGS,
    CHAT_TEMPLATE,
    hf_greedy,
    make_config,
    make_model_dir,
    make_tokenizer,
)
from bare_engine.testing.step_checks import StepReport, check_sampling_step

__all__ = ["ARCH_CONFIGS", "CHAT_TEMPLATE", "StepReport", "check_sampling_step", "hf_greedy", "make_config",
           "make_model_dir", "make_tokenizer"]
