"""Train the bundled demo pair: a tiny Llama base model and its instruct version.

    nice -n 10 python scripts/train_demo.py --out bare_engine/demo/models

Seeded and reproducible on CPU (2 threads). `--quick` trains a tiny smoke version in seconds;
`--base-steps/--instruct-steps` shorten a trial run. Writes <out>/base and <out>/instruct in
Hugging Face layout (bf16 safetensors) and the seeds file.

The shipped pair is this script's output with the defaults below (about 20 min wall with 2
threads on quiet cores: base 8 min, instruct 10). `--from-base DIR` retrains only the instruct
half from a saved base, giving the same instruct model as a full run; `--set KEY=VALUE`
overrides one Settings field (trials).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_data import (  # noqa: E402
    TEMPLATES, arithmetic_document, base_document, instruct_pair, own_output_pair, pick_task, refine_pair,
    seed_examples, seeds, slip_pair,
)
from demo_circuit import CopyCircuit  # noqa: E402
from demo_tokenizer import train_tokenizer  # noqa: E402

from bare_engine.demo import lexicon as lx  # noqa: E402
from bare_engine.demo.repair import repair  # noqa: E402
from bare_engine.demo.world import worked_answer  # noqa: E402

MAX_POSITIONS = 2048
DEFAULT_SEEDS_PATH = Path(__file__).resolve().parent.parent / "bare_engine" / "demo" / "data" / "seeds.jsonl"


@dataclass
class Settings:
    vocab_size: int = 2048
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 704
    rope_theta: float = 1e8
    # Plant an induction head (demo_circuit). It wants 64-dim heads and a large RoPE base, which
    # keeps their upper half near-static over the context, where the head matches tokens by content.
    copy_circuit: bool = True
    copy_code_dims: int = 32
    copy_positional_pairs: int = 12
    copy_lookback: int = 1  # layer-0 heads that write the codes of the 1..N previous tokens
    copy_match: int = 1  # tokens the induction head matches (2 needs copy_lookback >= 2)
    tokenizer_docs: int = 1500
    base_steps: int = 450
    base_batch: int = 8
    base_arithmetic: int = 1  # rows per base batch that are pages of sums
    base_refine: int = 1  # rows per base batch that are "improve this" chats as plain text
    base_repeat: int = 1  # rows per base batch that are a problem set written out twice
    copy_drill_steps: int = 100  # first base steps: half of the base documents become copy drills
    base_len: int = 576
    base_lr: float = 3e-3
    own_outputs: int = 384  # base samples that become "improve this" candidates
    instruct_steps: int = 500
    instruct_batch: int = 8
    # Rows per instruct batch that are pages of sums (plain text): the refiner recomputes each
    # step, and this is where it learns to add and subtract (the base gets about 25% right).
    instruct_arithmetic: int = 3
    instruct_len: int = 640
    instruct_lr: float = 1.5e-3
    instruct_share: float = 0.2  # share of "write one" tasks (the rest are "improve this")
    own_share: float = 0.8  # share of "improve this" tasks whose candidate is a base output
    # share of the other "improve this" tasks whose candidate has one of the base model's
    # slips that make a question unreadable (the reply repairs it); the rest are corruptions
    slip_share: float = 0.5
    warmup: int = 30
    log_every: int = 25


QUICK = Settings(vocab_size=400, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                 copy_code_dims=8, copy_positional_pairs=4,
                 tokenizer_docs=40, base_steps=4, base_batch=5, base_arithmetic=1, base_len=256, own_outputs=4,
                 copy_drill_steps=2,
                 instruct_steps=4, instruct_batch=2, instruct_arithmetic=1, instruct_len=700, warmup=2, log_every=2)


def model_config(s: Settings, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        # RoPE has no learned positions; 2048 lets a prompt plus the pipeline's default
        # max_tokens (1000) fit, though training sequences are shorter.
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5, rope_theta=s.rope_theta,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """rows of (input_ids, labels) -> right-padded tensors; labels -100 where no loss is taken."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return ids, labels


def base_rows(rng: random.Random, tok, s: Settings, drill: bool = False):
    """Pages of sums, "improve this" chats and repeated problem sets (pretraining text that
    holds instruction data and copies, as web text does), then base documents; with `drill`,
    every other base document is a copy drill."""
    rows = []
    for i in range(s.base_batch):
        if i < s.base_arithmetic:
            ids = tok(arithmetic_document(rng, 50)).input_ids
        elif i < s.base_arithmetic + s.base_refine:
            user, reply = refine_pair(rng)
            ids = chat_prompt_ids(tok, user) + tok(reply).input_ids + [tok.eos_token_id]
        elif i < s.base_arithmetic + s.base_refine + s.base_repeat:
            ids = tok(repeated_document(rng)).input_ids
        elif drill and i % 2:
            ids = tok(copy_drill(rng)).input_ids
        else:
            ids = tok(base_document(rng, n_examples=5)).input_ids
        ids = ids[: s.base_len]
        rows.append((ids, ids))
    return rows


DRILL_WORDS = list(lx.NAMES) + [w for category in lx.CATEGORIES.values() for w in category[0]] + [str(n) for n in range(60)]


def copy_drill(rng: random.Random, n_segments: int = 8) -> str:
    """Random runs of the world's words, each written out three times. Only an induction head
    (find the earlier copy, continue it) predicts the repeats, so a small model learns to copy
    from its context early instead of after thousands of steps (it then reuses that to copy a
    refine candidate or a question's numbers)."""
    lines = []
    for _ in range(n_segments):
        run = " ".join(rng.choice(DRILL_WORDS) for _ in range(rng.randint(6, 14)))
        lines += [run] * 3
    return "\n".join(lines)


def repeated_document(rng: random.Random, n_examples: int = 3) -> str:
    first = base_document(rng, n_examples)
    return first + TEMPLATES.separator + "The same problems again:" + TEMPLATES.separator + first.split(TEMPLATES.separator, 1)[1]


def sample_own_outputs(model, tok, rng: random.Random, n: int, batch: int = 64) -> list[dict]:
    """The base model's parsed continuations of base prompts (3 fresh seed examples each),
    sampled as the pipeline's base stage samples them (temperature 0.7)."""
    from transformers import GenerationConfig

    tok.padding_side = "left"
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=200,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            prompts = [TEMPLATES.base(pick_task(rng), seed_examples(rng)) for _ in range(min(batch, n - start))]
            enc = tok(prompts, return_tensors="pt", padding=True)
            ids = model.generate(**enc, generation_config=config)[:, enc.input_ids.shape[1]:]
            for text in tok.batch_decode(ids, skip_special_tokens=True):
                record = TEMPLATES.parse(text.split(TEMPLATES.stop_string)[0])
                if record is not None:
                    out.append(record)
    tok.padding_side = "right"
    return out



def chat_prompt_ids(tok, user: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tok(text).input_ids


def instruct_rows(rng: random.Random, tok, s: Settings, own: list[dict]):
    """Chat pairs (the loss covers only the assistant's tokens and its closing EOS), plus
    pages of sums as plain text (mixing pretraining text into fine-tuning)."""
    rows = []
    for _ in range(s.instruct_arithmetic):
        # Lines start with a space so that a first operand is the token it is in an answer
        # (" 8" after "has"); pages of "8 - 2 = 6" lines teach sums that answers do not reuse.
        ids = tok(arithmetic_document(rng, 50, lead=" ")).input_ids[: s.instruct_len]
        rows.append((ids, ids))
    while len(rows) < s.instruct_batch:
        pair = chat_pair(rng, s, own)
        if pair is None:
            continue
        user, reply = pair
        prompt = chat_prompt_ids(tok, user)
        target = tok(reply).input_ids + [tok.eos_token_id]
        ids = prompt + target
        if len(ids) <= s.instruct_len:
            rows.append((ids, [-100] * len(prompt) + target))
    return rows


def chat_pair(rng: random.Random, s: Settings, own: list[dict]):
    if rng.random() < s.instruct_share:
        return instruct_pair(rng)
    if own and rng.random() < s.own_share:
        return own_output_pair(rng, rng.choice(own))
    if rng.random() < s.slip_share:
        return slip_pair(rng)
    return refine_pair(rng)


def train(model, make_rows, steps: int, lr: float, s: Settings, pad_id: int, name: str):
    """`steps` optimizer steps on the batches `make_rows(step)` returns, with the planted copy
    circuit reset after each."""
    circuit = plant(model, s)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    start, cpu_start, running = time.time(), time.process_time(), 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, s.warmup)
        ids, labels = pad_batch(make_rows(step), pad_id)
        # Rows are padded on the right and attention is causal, so no real token sees a pad:
        # no attention mask is needed, and without one attention takes its causal fast path.
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if circuit is not None:
            circuit.apply()
        running += loss.item()
        if (step + 1) % s.log_every == 0 or step + 1 == steps:
            n = (step % s.log_every) + 1
            print(f"[{name}] step {step + 1}/{steps} loss {running / n:.3f} {time.time() - start:.0f}s "
                  f"(cpu {time.process_time() - cpu_start:.0f}s)", flush=True)
            running = 0.0
    model.eval()
    return model


def plant(model, s: Settings):
    if not s.copy_circuit:
        return None
    try:
        return CopyCircuit(model, code_dims=s.copy_code_dims, positional_pairs=s.copy_positional_pairs,
                           lookback=s.copy_lookback, match=s.copy_match)
    except ValueError as e:
        raise SystemExit(f"error: copy circuit: {e}") from None


def save(model, tok, path: Path):
    from transformers import GenerationConfig

    path.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    model.to(torch.float32)
    save_tokenizer(tok, path)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(path)


def save_tokenizer(tok, path: Path):
    tok.save_pretrained(path)
    # transformers >= 5 keeps the template in chat_template.jinja and names its own tokenizer
    # class; older readers look for the template here and know PreTrainedTokenizerFast.
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(chat_template=tok.chat_template, tokenizer_class="PreTrainedTokenizerFast",
                  model_max_length=MAX_POSITIONS)
    for key in ("is_local", "local_files_only"):  # how a --from-base tokenizer was loaded, not what it is
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_seeds(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in seeds()), encoding="utf-8")


def parse_overrides(s: Settings, pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(s, key):
            raise SystemExit(f"error: --set wants KEY=VALUE with KEY a Settings field, got {pair!r}")
        kind = type(getattr(s, key))
        if kind is bool and value.lower() not in ("true", "false"):
            raise SystemExit(f"error: --set {key} wants true or false, got {value!r}")
        out[key] = value.lower() == "true" if kind is bool else kind(value)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/base and OUT/instruct")
    parser.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS_PATH, help="where to write seeds.jsonl")
    parser.add_argument("--quick", action="store_true", help="tiny smoke version (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, help="override the base stage's step count (a shorter trial run)")
    parser.add_argument("--instruct-steps", type=int, help="override the instruct stage's step count")
    # On a machine shared with other jobs, 1 thread can be faster than 2 (no waiting on a
    # descheduled thread); results then differ from a 2-thread run only by float rounding.
    parser.add_argument("--from-base", type=Path, help="skip the base stage: load the base model and tokenizer from DIR")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one Settings field (repeatable), e.g. --set instruct_lr=2e-3")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the smoke version uses 1)")
    args = parser.parse_args(argv)

    from transformers import LlamaForCausalLM

    torch.set_num_threads(1 if args.quick else args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    s = QUICK if args.quick else Settings()
    s = replace(s, base_steps=args.base_steps or s.base_steps, instruct_steps=args.instruct_steps or s.instruct_steps)
    s = replace(s, **parse_overrides(s, args.set))
    t0, cpu0 = time.time(), time.process_time()

    if args.from_base:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.from_base)
        model = LlamaForCausalLM.from_pretrained(args.from_base, torch_dtype=torch.float32)
    else:
        texts = [base_document(rng, n_examples=6) for _ in range(s.tokenizer_docs)]
        texts += [arithmetic_document(rng, 20) for _ in range(s.tokenizer_docs // 10)]
        texts += [u + r for u, r in (instruct_pair(rng) for _ in range(s.tokenizer_docs // 10))]
        texts += [u + r for u, r in (refine_pair(rng) for _ in range(s.tokenizer_docs // 10))]
        tok = train_tokenizer(texts, s.vocab_size)
        model = LlamaForCausalLM(model_config(s, tok))
        print(f"tokenizer {len(tok)} tokens, model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params", flush=True)
        train(model, lambda step: base_rows(rng, tok, s, drill=step < s.copy_drill_steps), s.base_steps,
              s.base_lr, s, tok.pad_token_id, "base")
    save(model, tok, args.out / "base")
    # The instruct stage starts from the saved base, as --from-base does, with its own seed:
    # a full run and --from-base on its base give the same instruct model. (Reloading also
    # rebuilds RoPE's inv_freq, which the bf16 round trip in save() rounds.)
    model = LlamaForCausalLM.from_pretrained(args.out / "base", torch_dtype=torch.float32)
    torch.manual_seed(args.seed + 1)
    rng = random.Random(args.seed + 1)
    own = sample_own_outputs(model, tok, rng, s.own_outputs)
    print(f"{len(own)} base outputs parsed of {s.own_outputs} sampled "
          f"({sum(worked_answer(r['question']) is not None for r in own)} readable, "
          f"{sum(repair(r['question']) is not None for r in own)} after repair) "
          f"{time.time() - t0:.0f}s", flush=True)
    train(model, lambda step: instruct_rows(rng, tok, s, own), s.instruct_steps, s.instruct_lr, s, tok.pad_token_id, "instruct")
    save(model, tok, args.out / "instruct")
    write_seeds(args.seeds)
    print(f"done in {time.time() - t0:.0f}s (cpu {time.process_time() - cpu0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
