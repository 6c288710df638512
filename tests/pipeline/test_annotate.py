"""Annotate mode: a teacher labels unlabeled examples (tiny random models on CPU).

The constrained labels are checked against an independent transformers reference: the
constrained distribution over the label set, step by step over the label token trie.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_pipeline_fake_engine import read_records, write_jsonl

from bare_engine.errors import ConfigError, ModelLoadError, ResumeMismatchError
from bare_engine.eval.export import export_records
from bare_engine.pipeline.annotate import prepare_annotate
from bare_engine.pipeline.annotate_prompt import AnnotatePrompt, label_token_ids
from bare_engine.pipeline.cli import run_command
from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline
from bare_engine.testing import make_model_dir, make_tokenizer

LABELS = ["positive", "negative", "no", "no way"]  # " no" is a token prefix of " no way"
SEEDS = [{"id": "s0", "text": "a good film", "label": "positive"}, {"id": "s1", "text": "a dull film", "label": "negative"},
         {"id": "s2", "text": "would I watch it again", "label": "no way"}]
INPUTS = [{"id": "a", "text": "the fox jumps"}, {"text": "the cat sleeps"}, {"id": 7, "text": "Tom has 3 apples"},
          {"text": "the lazy dog"}, {"id": "e", "text": "twelve pens"}]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    make_model_dir(root / "teacher", "llama", seed=3)
    write_jsonl(root / "seeds.jsonl", SEEDS)
    write_jsonl(root / "inputs.jsonl", INPUTS)
    return root


def annotate_config(root: Path, out: Path, **overrides):
    values = {"mode": "annotate", "teacher": str(root / "teacher"), "seeds": str(root / "seeds.jsonl"),
              "input": str(root / "inputs.jsonl"), "labels": LABELS, "out": str(out), "progress": False,
              "engine.device": "cpu", "engine.max_num_seqs": 4}
    values.update(overrides)
    return load_config(None, values)


def quiet(_line: str) -> None:
    pass


def no_engine(_cfg):
    raise AssertionError("a model was loaded although the input is bad")


# ----------------------------------------------------------------- the transformers reference


class Reference:
    """The constrained distribution over token sequences, computed with transformers."""

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos = self.model.config.eos_token_id
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    @torch.no_grad()
    def prime(self, prompt: list[int], path: list[int]) -> None:
        """One forward pass gives the next-token logprobs after every prefix of `path`."""
        if tuple(prompt + path) in self.cache:
            return
        logits = self.model(torch.tensor([prompt + path])).logits[0, len(prompt) - 1:].double()
        for t, row in enumerate(torch.log_softmax(logits, dim=-1)):
            self.cache[tuple(prompt + path[:t])] = row

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        if tuple(ids) not in self.cache:
            self.prime(ids, [])
        return self.cache[tuple(ids)]

    def allowed(self, seqs: list[list[int]], prefix: list[int]) -> list[int]:
        t = len(prefix)
        children = sorted({s[t] for s in seqs if s[:t] == prefix and len(s) > t})
        return children + [self.eos] if prefix in seqs and children else children

    def step(self, prompt: list[int], seqs, prefix) -> dict[int, float]:
        allowed = self.allowed(seqs, prefix)
        constrained = torch.log_softmax(self.logprobs(prompt + prefix)[allowed], dim=-1)
        return dict(zip(allowed, constrained.tolist()))

    def label_probs(self, prompt: list[int], seqs: list[list[int]]) -> list[float]:
        paths = []
        for seq in seqs:
            ends_with_eos = any(len(s) > len(seq) and s[: len(seq)] == seq for s in seqs)
            paths.append(seq + [self.eos] if ends_with_eos else seq)
        for path in sorted(paths, key=len, reverse=True):
            self.prime(prompt, path[:-1])
        return [math.exp(sum(self.step(prompt, seqs, path[:t])[path[t]] for t in range(len(path)))) for path in paths]

    def greedy(self, prompt: list[int], seqs: list[list[int]]) -> int:
        prefix: list[int] = []
        while prefix not in seqs or self.allowed(seqs, prefix):
            lp = self.step(prompt, seqs, prefix)
            token = max(lp, key=lambda t: (lp[t], -t))
            if token == self.eos:
                break
            prefix.append(token)
        return seqs.index(prefix)


def prompt_ids(cfg, fields: dict[str, str]) -> list[int]:
    prompt = AnnotatePrompt.from_config(cfg)
    seeds = [{k: s[k] for k in ("text", "label")} for s in SEEDS[: cfg.k]]
    return make_tokenizer()(prompt.prompt(seeds, fields)).input_ids


# ----------------------------------------------------------------- classification


def test_default_prompt_layout_and_label_tokens(root, tmp_path):
    cfg = annotate_config(root, tmp_path / "o.jsonl", k=2)
    prompt = AnnotatePrompt.from_config(cfg)
    text = prompt.prompt([{"text": "a", "label": "positive"}, {"text": "b", "label": "no"}], {"text": "c"})
    assert text == ("Give each example its label: one of positive, negative, no, no way.\n\n"
                    "Text: a\nLabel: positive\n\nText: b\nLabel: no\n\nText: c\nLabel:")
    assert prompt.answer_context == ("\nLabel:", " ")
    tok = make_tokenizer()
    ids = label_token_ids(tok, LABELS, *prompt.answer_context)
    assert ids == [tok(" " + label, add_special_tokens=False)["input_ids"] for label in LABELS]
    assert ids[3][: len(ids[2])] == ids[2]  # the trie case: "no" must end with EOS


def test_labels_are_constrained_and_probabilities_match_the_reference(root, tmp_path):
    cfg = annotate_config(root, tmp_path / "out.jsonl")
    result = run_pipeline(cfg, log=quiet)
    records = read_records(cfg.out)
    assert result.complete and len(records) == len(INPUTS)
    assert [r["id"] for r in records] == ["a", 1, 7, 3, "e"]  # the id field, else the line index
    assert [r["candidate"] for r in records] == list(range(len(INPUTS)))
    ref = Reference(root / "teacher")
    seqs = label_token_ids(make_tokenizer(), LABELS, "\nLabel:", " ")
    for row, r in zip(INPUTS, records):
        ids = prompt_ids(cfg, {"text": row["text"]})
        # Unconstrained, the model would write something else: the mask does the work.
        assert int(ref.logprobs(ids).argmax()) not in {s[0] for s in seqs}
        probs = ref.label_probs(ids, seqs)
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
        assert r["label"] == LABELS[ref.greedy(ids, seqs)] and r["label"] in LABELS
        assert 0.0 < r["label_prob"] <= 1.0
        assert r["label_prob"] == pytest.approx(probs[LABELS.index(r["label"])], abs=1e-4)
        assert r["fields"] == {"text": row["text"], "label": r["label"]}
        assert r["annotate"]["text"].strip() == r["label"] and r["annotate"]["finish_reason"] == "stop"
        assert r["annotate"]["prompt_tokens"] == len(ids) and r["seed_ids"] == ["s0", "s1", "s2"]


def test_choice_constraint_labels_every_input_from_the_label_set(root, tmp_path):
    """label_constraint "choice": structured outputs over lead + label, any tokenization of it."""
    pytest.importorskip("xgrammar")
    trie = read_records(run_and_check(annotate_config(root, tmp_path / "trie.jsonl")))
    choice = read_records(run_and_check(annotate_config(root, tmp_path / "choice.jsonl", label_constraint="choice")))
    assert [r["id"] for r in choice] == [r["id"] for r in trie]
    for r in choice:
        assert r["label"] in LABELS and 0.0 < r["label_prob"] <= 1.0
        assert r["annotate"]["text"] == " " + r["label"] and r["annotate"]["finish_reason"] == "stop"
        assert r["fields"]["label"] == r["label"]


def run_and_check(cfg):
    assert run_pipeline(cfg, log=quiet).complete
    return cfg.out


def test_label_constraint_joins_the_resume_key_only_when_set(root, tmp_path):
    from bare_engine.pipeline.config import resume_key

    assert "label_constraint" not in resume_key(annotate_config(root, tmp_path / "a.jsonl"))  # older manifests resume
    assert resume_key(annotate_config(root, tmp_path / "a.jsonl", label_constraint="choice"))["label_constraint"] == "choice"
    with pytest.raises(ConfigError, match="label_constraint must be one of trie, choice, got 'regex'"):
        annotate_config(root, tmp_path / "a.jsonl", label_constraint="regex")


def test_sampled_labels_carry_probabilities_that_sum_to_one(root, tmp_path):
    """Two labels, the same input many times at temperature 1: both labels come up, and the
    probability recorded with each is the model's; the two add up to 1."""
    write_jsonl(tmp_path / "same.jsonl", [{"text": "the fox jumps"}] * 16)
    write_jsonl(tmp_path / "seeds.jsonl", [{"text": "a good film", "label": "yes"}, {"text": "a dull film", "label": "no"}])
    cfg = annotate_config(root, tmp_path / "out.jsonl", input=str(tmp_path / "same.jsonl"), labels=["yes", "no"],
                          seeds=str(tmp_path / "seeds.jsonl"), k=2,
                          **{"sampling.annotate.temperature": 1.0})
    run_pipeline(cfg, log=quiet)
    probs: dict[str, set[float]] = {}
    for r in read_records(cfg.out):
        probs.setdefault(r["label"], set()).add(round(r["label_prob"], 6))
    assert set(probs) == {"yes", "no"} and all(len(p) == 1 for p in probs.values())
    assert probs["yes"].pop() + probs["no"].pop() == pytest.approx(1.0, abs=1e-5)


def test_lora_adapter_teacher(root, tmp_path):
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj", "lm_head"]}))
    vocab = json.loads((root / "teacher" / "config.json").read_text())["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for module, (out_dim, in_dim) in {"model.layers.1.self_attn.q_proj": (64, 64),
                                      "model.layers.1.self_attn.v_proj": (32, 64), "lm_head": (vocab, 64)}.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(2, in_dim, generator=gen) * 0.5
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.5
    save_file(tensors, adapter / "adapter_model.safetensors")

    plain = annotate_config(root, tmp_path / "plain.jsonl")
    tuned = annotate_config(root, tmp_path / "tuned.jsonl", teacher=str(adapter), teacher_base=str(root / "teacher"))
    run_pipeline(plain, log=quiet)
    run_pipeline(tuned, log=quiet)
    a, b = read_records(plain.out), read_records(tuned.out)
    assert len(b) == len(INPUTS) and all(r["label"] in LABELS for r in b)
    assert [r["label_prob"] for r in a] != [r["label_prob"] for r in b]  # the adapter is applied
    manifest = json.loads(Path(tuned.out + ".manifest.json").read_text())
    assert manifest["models"]["teacher_base"]["path"] == str((root / "teacher").resolve())
    with pytest.raises(ModelLoadError, match="needs its base model"):
        run_pipeline(annotate_config(root, tmp_path / "x.jsonl", teacher=str(adapter)), no_engine, log=quiet)


# ----------------------------------------------------------------- generation


def test_generation_task_writes_free_text_up_to_a_stop_string(root, tmp_path):
    common = dict(labels=None, drop_truncated=False, **{"sampling.annotate.max_tokens": 6,
                                                        "sampling.annotate.temperature": 0.8})
    cfg = annotate_config(root, tmp_path / "free.jsonl", **common)
    run_pipeline(cfg, log=quiet)
    free = read_records(cfg.out)
    assert len(free) == len(INPUTS)
    for r in free:
        text = r["annotate"]["text"]
        assert r["label"] == (text.strip() or None) and r["label_prob"] is None
        assert 1 <= r["annotate"]["output_tokens"] <= 6
    # A stop string taken from one output cuts that output (same seed, same tokens up to it).
    text = next(r["annotate"]["text"] for r in free if len(r["annotate"]["text"].strip()) >= 4).strip()
    stop = text[2:4]
    stopped = read_records(run_and_out(annotate_config(root, tmp_path / "stop.jsonl", stop=[stop], **common)))
    for before, after in zip(free, stopped):
        if stop in before["annotate"]["text"]:
            assert after["annotate"]["text"] == before["annotate"]["text"].split(stop)[0]
            assert after["annotate"]["finish_reason"] == "stop"
    # With drop_truncated, an output cut by max_tokens keeps its record but gets no label.
    strict = read_records(run_and_out(annotate_config(root, tmp_path / "strict.jsonl", **{**common, "drop_truncated": True})))
    assert len(strict) == len(INPUTS)
    for r in strict:
        if r["annotate"]["finish_reason"] == "length":
            assert r["label"] is None and "label" not in r["fields"]


def run_and_out(cfg) -> str:
    run_pipeline(cfg, log=quiet)
    return cfg.out


# ----------------------------------------------------------------- CLI, export, resume


def test_cli_end_to_end_and_sft_export(root, tmp_path):
    out = tmp_path / "cli.jsonl"
    args = ["--mode", "annotate", "--teacher", str(root / "teacher"), "--seeds", str(root / "seeds.jsonl"),
            "--input", str(root / "inputs.jsonl"), "--labels", ",".join(LABELS), "--out", str(out),
            "--no-progress", "--device", "cpu", "--k", "2", "--seed-order", "shuffle", "--seed", "5"]
    result = CliRunner().invoke(run_command, args)
    assert result.exit_code == 0, result.output
    assert f"done: {len(INPUTS)}/{len(INPUTS)} records" in result.stderr
    records = read_records(out)
    assert [r["fields"]["text"] for r in records] == [row["text"] for row in INPUTS]
    assert all(r["label"] in LABELS and len(r["seed_ids"]) == 2 for r in records)

    sft = export_records(out, "sft", tmp_path / "sft.jsonl", user_field="text", assistant_field="label")
    assert sft.written == len(INPUTS)
    lines = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [m["messages"] for m in lines] == [
        [{"role": "user", "content": r["fields"]["text"]}, {"role": "assistant", "content": r["label"]}] for r in records
    ]


def test_resume_after_a_torn_write_gives_the_same_records(root, tmp_path):
    reference = annotate_config(root, tmp_path / "ref.jsonl", seed=4)
    run_pipeline(reference, log=quiet)
    # What kill -9 leaves: some whole records and a torn last line.
    out = tmp_path / "out.jsonl"
    run_pipeline(annotate_config(root, out, seed=4, num=2), log=quiet)
    with open(out, "ab") as f:
        f.write(b'{"id": "e", "candid')
    logs: list[str] = []
    resumed = annotate_config(root, out, seed=4, **{"engine.max_num_seqs": 1})
    result = run_pipeline(resumed, log=logs.append)
    assert result.written == len(INPUTS) - 2 and any("torn last line" in line for line in logs)
    assert_same_records(read_records(out), read_records(reference.out))
    # A finished output is left alone; a changed label set is refused.
    assert run_pipeline(resumed, no_engine, log=quiet).written == 0
    with pytest.raises(ResumeMismatchError, match="labels"):
        run_pipeline(annotate_config(root, out, seed=4, labels=[*LABELS, "maybe"]), no_engine, log=quiet)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Equal, except that label_prob may differ in the last float32 digits: the forward pass is not
    bit-identical across batch shapes (the sampled tokens are)."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a["label_prob"] == pytest.approx(b["label_prob"], abs=1e-5)
        assert {**a, "label_prob": None} == {**b, "label_prob": None}


def test_num_caps_the_lines_annotated(root, tmp_path):
    logs: list[str] = []
    result = run_pipeline(annotate_config(root, tmp_path / "o.jsonl", num=3), log=logs.append)
    assert result.complete and result.records == 3
    assert "annotating the first 3 of 5 input lines" in logs[0]


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"labels": []}, "labels is empty"),
        ({"labels": ["yes", " "]}, "labels must not be blank"),
        ({"labels": ["yes", "yes"]}, "labels has duplicates"),
        ({"labels": ["yes"]}, "labels needs at least two labels"),
        ({"input": ""}, "mode annotate needs an input file"),
        ({"teacher": None}, "mode annotate needs a teacher model"),
        ({"input_fields": ["text", "label"]}, "label_field 'label' is also one of the input_fields"),
        ({"annotate_template": "{task} {inputs}"}, "annotate_template refers to an unknown placeholder {inputs}"),
        ({"annotate_template": "{task} {examples}"}, "annotate_template must contain {input}"),
        ({"annotate_example": "Text: {text}"}, "annotate_example must end with {label}"),
        ({"annotate_example": "{label}: {text}"}, "annotate_example must end with {label}"),
        ({"annotate_example": "{txt} -> {label}"}, "annotate_example refers to an unknown field {txt}"),
        ({"stop": [""]}, "stop strings must not be empty"),
        ({"sampling.annotate.temperature": -1.0}, "sampling.annotate: invalid sampling parameter"),
    ],
)
def test_bad_config_values(root, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        annotate_config(root, tmp_path / "o.jsonl", **overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_misspelled_key_is_named(root, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lables' \\(did you mean 'labels'\\?\\)"):
        load_config(None, {"lables": ["a", "b"]})


def _nothing_tokenizer_teacher(root: Path, path: Path) -> Path:
    """A teacher whose tokenizer deletes U+200B, so the label "\u200b" tokenizes to nothing."""
    from tokenizers import normalizers

    path.mkdir()
    shutil.copy(root / "teacher" / "config.json", path / "config.json")
    tok = make_tokenizer()
    tok.backend_tokenizer.normalizer = normalizers.Replace("\u200b", "")
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_field", "input file {input} line 1: missing field 'body'"),
        ("empty_input", "input file {input} is empty"),
        ("seed_label", "seed 's2' has label 'no way', which is not one of the labels"),
        ("nothing_label", "label '\\u200b' tokenizes to nothing with the teacher's tokenizer"),
        ("no_teacher", "teacher model not found"),
        ("base_without_adapter", "teacher_base is only for a LoRA adapter teacher"),
    ],
)
def test_bad_inputs_fail_before_any_model_loads(root, tmp_path, case, message):
    inputs = tmp_path / "inputs.jsonl"
    write_jsonl(inputs, INPUTS)
    overrides: dict = {"input": str(inputs)}
    if case == "unknown_field":
        overrides["input_fields"] = ["body"]
    elif case == "empty_input":
        inputs.write_text("\n")
    elif case == "seed_label":
        overrides["labels"] = ["positive", "negative"]
    elif case == "nothing_label":
        overrides["teacher"] = str(_nothing_tokenizer_teacher(root, tmp_path / "t"))
        overrides["labels"] = ["positive", "negative", "no way", "\u200b"]
    elif case == "no_teacher":
        overrides["teacher"] = str(tmp_path)
    else:
        overrides["teacher_base"] = str(root / "teacher")
    cfg = annotate_config(root, tmp_path / "o.jsonl", **overrides)
    with pytest.raises(ConfigError) as info:
        run_pipeline(cfg, no_engine, log=quiet)
    assert message.format(input=inputs) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_prepare_checks_labels_with_the_teachers_tokenizer(root, tmp_path):
    job = prepare_annotate(annotate_config(root, tmp_path / "o.jsonl"), log=quiet)
    assert job.label_ids == label_token_ids(make_tokenizer(), LABELS, "\nLabel:", " ")
    assert job.cfg.num == len(INPUTS) and [e.id for e in job.inputs] == ["a", 1, 7, 3, "e"]
