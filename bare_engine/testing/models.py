"""Tiny random Hugging Face checkpoints and tokenizers, built offline, for tests and benchmarks.

Every model is a real `save_pretrained` safetensors checkpoint made by transformers,
so the engine loads exactly what users' checkpoints look like.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have? Answer: 7",
    "Question: A box holds 12 pens. Sara takes 5. How many are left? Answer: 7",
    "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat",
    "<example> <question> <answer> </example> ### Input Output Label: positive negative neutral",
    "Improve this problem so it is clear and correct. Write one new problem like these examples.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 plus minus times divided by equals total each every",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_object(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def make_tokenizer(vocab_size: int = 512, chat_template: bool = True):
    """A byte-level BPE tokenizer (any text round-trips) with BOS/EOS and an optional chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_object(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


ARCH_CONFIGS = {
    "llama": dict(model_type="llama"),
    "llama3": dict(
        model_type="llama",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3", head_dim=32),
    "mistral": dict(model_type="mistral", sliding_window=None),
}


def make_config(arch: str = "llama", vocab_size: int | None = None, **overrides):
    from transformers import AutoConfig

    spec = dict(ARCH_CONFIGS[arch])
    model_type = spec.pop("model_type")
    tok = make_tokenizer()
    kwargs = dict(
        vocab_size=vocab_size or len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    kwargs.update(spec)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def make_model_dir(
    path: str | Path,
    arch: str = "llama",
    seed: int = 0,
    max_shard_size: str | None = None,
    chat_template: bool = True,
    **config_overrides,
) -> Path:
    """Save a randomly initialised tiny model + tokenizer in HF layout; returns the directory."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    config = make_config(arch, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Larger-than-default init so that greedy decoding is not stuck on one token.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            elif "bias" in name:
                p.normal_(0.0, 0.02)
    kwargs = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(path, **kwargs)
    make_tokenizer(chat_template=chat_template).save_pretrained(path)
    return path


def hf_greedy(model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference greedy continuations from transformers, one prompt at a time (no padding effects)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    outs = []
    with torch.no_grad():
        for ids in prompts:
            inp = torch.tensor([ids])
            gen = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
            outs.append(gen[0, len(ids):].tolist())
    return outs
