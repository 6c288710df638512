"""The demo models' tokenizer: byte-level BPE with single-digit numbers, trained on world text."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, EOS, "<|user|>", "<|assistant|>", "<|system|>"]
# Each turn ends with <|end|>, which is also the EOS token, so generation stops there.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Single digits keep arithmetic learnable. A number's leading space stays on its first
    # digit (" 26" -> " 2", "6"), so "gives 6" is two tokens and a plain induction head can
    # copy a number from the question; a bare space token before every digit would hide it.
    # Byte-level makes any text round-trip.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    return fast
