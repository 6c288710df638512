"""The demo world (generator + checker), its noise, the demo tokenizer, the training script
and the shipped demo model pair."""

import random
import re
import sys
from pathlib import Path

import pytest
import torch

from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR, SEEDS_PATH, load_seeds
from bare_engine.demo.noise import CORRUPTIONS, corrupt
from bare_engine.demo.world import (
    NARROW,
    check,
    final_number,
    generate_problem,
    solve,
    worked_answer,
)

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

HAND_WRITTEN = [
    ("Mia has 12 apples. She buys 5 more apples. She gives 3 apples to Leo. "
     "How many apples does Mia have now?", 14),
    ("At the bakery, Tom has 4 trays with 6 muffins in each. He eats 3 muffins. Then he splits "
     "the muffins equally into 3 boxes and keeps one box. How many muffins does he have at the end?", 7),
    ("Sara starts with 20 dollars. She spends 8 dollars on a book. The number of dollars doubles. "
     "How many dollars does Sara end up with?", 24),
    ("There are 10 goats in Omar's barn. 6 more goats are born. It is a sunny day. He gives away half "
     "of his goats. How many goats are left?", 8),
    ("On Monday, Ivan buys 3 bags of marbles with 7 in each bag. Later, Zoe borrows 5 marbles from him. "
     "He ends up with 2 times as many marbles as before. How many marbles does Ivan have in the end?", 32),
]


def _record(question, final):
    return {"question": question, "answer": f"Some worked steps.\n#### {final}"}


@pytest.mark.parametrize("question,final", HAND_WRITTEN)
def test_hand_written_problems(question, final):
    assert solve(question) == final
    assert check(_record(question, final))
    assert not check(_record(question, final + 1))
    assert not check({"question": question, "answer": f"The answer is {final}."})


def test_worked_answer_restates_each_step():
    assert worked_answer(HAND_WRITTEN[1][0]) == (
        "Tom has 4 * 6 = 24 muffins.\n"
        "Then he eats 3 muffins, so he has 24 - 3 = 21.\n"
        "Then he splits the muffins equally into 3 boxes and keeps one box, so he has 21 / 3 = 7.\n"
        "#### 7"
    )


@pytest.mark.parametrize("question", [
    # ill-posed (11 goats cannot be halved), incoherent (other item / other person), off-grammar
    "There are 5 goats in Omar's barn. 6 more goats are born. He gives away half of his goats. How many goats are left?",
    "Mia has 12 apples. She buys 5 more apples. How many pears does Mia have now?",
    "Mia has 12 apples. She buys 5 more apples. How many apples does Leo have now?",
    "Mia has 12 apples. He buys 5 more apples. How many apples does Mia have now?",
    "Mia has 12 apples. She juggles 5 apples. How many apples does Mia have now?",
    "Mia has 12 apples. How many apples does Mia have now?",
    "Mia has 12 apples. She buys 5 more apples.",
])
def test_checker_rejects_unreadable_questions(question):
    assert solve(question) is None
    assert not check(_record(question, 17))


def test_final_number():
    assert final_number("a\nb\n#### 42") == 42
    assert final_number("#### 1,250") == 1250
    assert final_number("#### $7") == 7
    assert final_number("#### 3\nmore\n#### 5") == 5
    assert final_number("The answer is 42.") is None
    assert final_number("####") is None


def test_checker_passes_every_generated_problem():
    rng = random.Random(0)
    for world in (None, NARROW):
        for _ in range(1500):
            record = generate_problem(rng) if world is None else generate_problem(rng, world)
            assert check(record), record
            # the generator's own arithmetic agrees with the answer read back from the text
            assert final_number(record["answer"]) == record["final"]


def test_generator_is_seeded_and_diverse():
    assert generate_problem(random.Random(5)) == generate_problem(random.Random(5))
    rng = random.Random(1)
    problems = [generate_problem(rng) for _ in range(1000)]
    assert len({p["question"] for p in problems}) == 1000
    names = {p["question"].split(" has ")[0].split()[-1] for p in problems}
    ops = {op for p in problems for op in re.findall(r"\d+ ([-+*/]) \d+ = ", p["answer"].split("\n", 1)[1])}
    n_steps = {len(p["answer"].split("\n")) - 2 for p in problems}  # minus the start and #### lines
    assert len(names) > 30 and ops == {"+", "-", "*", "/"} and n_steps == {1, 2, 3}
    narrow = [generate_problem(rng, NARROW)["question"] for _ in range(300)]
    assert len({q.split()[0] for q in narrow}) == 3  # the narrow slice has three protagonists


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_checker_catches_injected_errors(kind):
    rng = random.Random(2)
    caught = 0
    for _ in range(300):
        record = generate_problem(rng)
        noisy = corrupt(record, rng, kind)
        assert noisy != {"question": record["question"], "answer": record["answer"]}
        caught += not check(noisy)
    # A typo in a name goes unnoticed; off-format answers keep "####" half the time.
    floor = {"typo": 0.98, "off_format": 0.4}.get(kind, 1.0)
    assert caught / 300 >= floor


def test_tokenizer_round_trips_world_text():
    from demo_data import base_document, refine_pair
    from demo_tokenizer import EOS, train_tokenizer

    rng = random.Random(0)
    tok = train_tokenizer([base_document(rng, 4) for _ in range(30)], vocab_size=600)
    texts = [base_document(rng, 2), "".join(refine_pair(rng)), "Unseen: Zyx ünïcødé 12,345 ✓"]
    for text in texts:
        ids = tok(text).input_ids
        assert tok.decode(ids) == text
    # one token per digit; a number's leading space rides on its first digit
    assert tok.convert_ids_to_tokens(tok(" 26 1234567890").input_ids) == ["Ġ2", "6", "Ġ1", *"234567890"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and tok.eos_token == EOS


@pytest.mark.parametrize("circuit", ["false", "true"])
def test_quick_training_writes_loadable_checkpoints(tmp_path, circuit):
    from train_demo import main
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main(["--quick", "--out", str(tmp_path / "models"), "--seeds", str(tmp_path / "seeds.jsonl"),
          "--set", f"copy_circuit={circuit}"])
    assert len(load_seeds(tmp_path / "seeds.jsonl")) == 20
    for kind in ("base", "instruct"):
        path = tmp_path / "models" / kind
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM" and (path / "model.safetensors").is_file()
        assert model.config.eos_token_id == tok.eos_token_id
        out = model.generate(**tok("Question:", return_tensors="pt"), max_new_tokens=3, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        assert out.shape[1] > 1


def test_from_base_retrains_the_same_instruct_model_as_a_full_run(tmp_path):
    from safetensors.torch import load_file
    from train_demo import main

    main(["--quick", "--out", str(tmp_path / "full"), "--seeds", str(tmp_path / "seeds.jsonl")])
    main(["--quick", "--out", str(tmp_path / "again"), "--seeds", str(tmp_path / "seeds.jsonl"),
          "--from-base", str(tmp_path / "full" / "base")])
    full, again = (load_file(tmp_path / run / "instruct" / "model.safetensors") for run in ("full", "again"))
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)
    base = load_file(tmp_path / "full" / "base" / "model.safetensors")
    assert not all(torch.equal(base[k], full[k]) for k in full)  # the instruct stage did train


@pytest.mark.parametrize("setting, message", [
    ("copy_circuit=yes", "--set copy_circuit wants true or false"),
    ("no_such_field=1", "--set wants KEY=VALUE"),
    ("copy_match=2", "copy circuit: .* do not fit"),  # 2-token matching needs 2 lookback heads
])
def test_bad_training_settings_exit_with_one_error_line(tmp_path, setting, message):
    from train_demo import main

    with pytest.raises(SystemExit, match=f"^error: {message}"):
        main(["--quick", "--out", str(tmp_path / "models"), "--seeds", str(tmp_path / "seeds.jsonl"), "--set", setting])


# ---------------------------------------------------------------- the shipped pair


def test_shipped_seeds_are_correct():
    seeds = load_seeds(SEEDS_PATH)
    assert len(seeds) >= 10 and all(check(s) for s in seeds)
    assert [s["id"] for s in seeds] == [f"seed-{i}" for i in range(len(seeds))]


def test_shipped_models_exist_and_are_small():
    files = [p for d in (BASE_MODEL_DIR, INSTRUCT_MODEL_DIR) for p in d.iterdir()]
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped():
    from bare_engine.demo.evaluate import load

    return {"base": load(BASE_MODEL_DIR), "instruct": load(INSTRUCT_MODEL_DIR)}


def test_shipped_models_load_with_chat_template(shipped):
    for model, tok in shipped.values():
        assert model.config.architectures == ["LlamaForCausalLM"]
        assert model.config.eos_token_id == tok.eos_token_id
        prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
        assert prompt == "<|user|>\nx<|end|>\n<|assistant|>\n"


def test_shipped_models_write_problems(shipped):
    from bare_engine.demo.evaluate import sample_base, sample_instruct, score

    seeds = [{"question": s["question"], "answer": s["answer"]} for s in load_seeds()[:3]]
    base_scores, _ = score(sample_base(*shipped["base"], seeds, n=50))
    inst_scores, _ = score(sample_instruct(*shipped["instruct"], seeds, n=50))
    print(f"\nbase {base_scores}\ninstruct {inst_scores}")
    assert base_scores.parse_rate >= 0.5 and base_scores.pass_rate > 0
    assert inst_scores.parse_rate >= 0.5 and inst_scores.pass_rate > 0
