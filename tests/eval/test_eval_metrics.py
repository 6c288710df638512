import numpy as np
import pytest

from bare_engine.errors import ConfigError
from bare_engine.eval.checks import load_check, run_check
from bare_engine.eval.diversity import (
    distinct_n,
    mean_pairwise_similarity,
    normalize,
    pairwise_similarities,
    vendi_score,
)
from bare_engine.eval.embed import hash_embedder
from bare_engine.eval.records import (
    fields_text,
    read_jsonl,
    record_fields,
    select_fields,
)
from bare_engine.eval.report import diversity_report


def test_identical_embeddings_similarity_one_vendi_one():
    x = normalize(np.tile([[3.0, -1.0, 2.0]], (5, 1)))
    assert mean_pairwise_similarity(x) == pytest.approx(1.0)
    sims = pairwise_similarities(x)
    assert len(sims.values) == 10 and np.allclose(sims.values, 1.0) and not sims.sampled
    assert vendi_score(x) == pytest.approx(1.0)


@pytest.mark.parametrize("n, d", [(4, 4), (3, 10)])
def test_orthogonal_embeddings_vendi_n(n, d):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = normalize(q[:n] * rng.uniform(0.5, 3.0, size=(n, 1)))  # arbitrary norms, orthogonal directions
    assert vendi_score(x) == pytest.approx(n)
    assert mean_pairwise_similarity(x) == pytest.approx(0.0, abs=1e-12)


def test_vendi_two_clusters_and_large_n_path():
    # Two equal groups of identical vectors: effective number 2, whether K is n x n or d x d.
    small = normalize(np.repeat(np.eye(2, 5), 2, axis=0))
    large = normalize(np.repeat(np.eye(2, 5), 50, axis=0))
    assert vendi_score(small) == pytest.approx(2.0)
    assert vendi_score(large) == pytest.approx(2.0)


def test_mean_similarity_matches_brute_force_and_sampling_is_seeded():
    x = normalize(np.random.default_rng(1).normal(size=(60, 8)))
    brute = np.mean([x[i] @ x[j] for i in range(60) for j in range(i + 1, 60)])
    assert mean_pairwise_similarity(x) == pytest.approx(brute)
    assert pairwise_similarities(x).values.mean() == pytest.approx(brute)
    a = pairwise_similarities(x, max_exact_records=10, num_pairs=50_000, seed=3)
    b = pairwise_similarities(x, max_exact_records=10, num_pairs=50_000, seed=3)
    assert a.sampled and a.total_pairs == 1770 and "sampled" in a.describe()
    np.testing.assert_array_equal(a.values, b.values)
    assert a.values.max() < 1.0 - 1e-9  # never a record paired with itself
    assert a.values.mean() == pytest.approx(brute, abs=0.01)


def test_distinct_n_hand_built():
    texts = ["the cat sat", "The cat ran!"]
    # unigrams: the cat sat the cat ran ! -> 5 distinct of 7
    assert distinct_n(texts, 1) == pytest.approx(5 / 7)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) (ran !) -> 4 of 5
    assert distinct_n(texts, 2) == pytest.approx(4 / 5)
    assert distinct_n(texts, 3) == pytest.approx(3 / 3)
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["one"], 2) == 0.0


def _stage(q, a):
    return {"model": "m", "seed": 1, "text": f"Question: {q}\nAnswer: {a}", "fields": {"question": q, "answer": a}}


# The layout bare_engine/pipeline/stages.py writes (mode "bare"): final fields plus one object per stage.
PIPELINE_RECORD = {"id": 3, "candidate": 5, "mode": "bare", "fields": {"question": "q1", "answer": "a1"},
                   "seed_ids": [0, 1, 2], "base": _stage("q0", "a0"), "refine": _stage("q1", "a1")}


def test_record_fields_default_and_paths():
    assert record_fields(PIPELINE_RECORD) == {"question": "q1", "answer": "a1"}
    no_final = {k: v for k, v in PIPELINE_RECORD.items() if k != "fields"}
    assert record_fields(no_final) == {"question": "q1", "answer": "a1"}
    unrefined = {**no_final, "refine": {**_stage("x", "y"), "fields": None}}
    assert record_fields(unrefined) == {"question": "q0", "answer": "a0"}
    assert record_fields(PIPELINE_RECORD, "base") == {"question": "q0", "answer": "a0"}
    assert record_fields(PIPELINE_RECORD, "refined") == record_fields(PIPELINE_RECORD, "refine")
    assert record_fields(PIPELINE_RECORD, "refine.text") == {"text": "Question: q1\nAnswer: a1"}
    assert record_fields(PIPELINE_RECORD, "refine.fields.answer") == {"answer": "a1"}
    assert record_fields(unrefined, "refine") is None
    assert record_fields(PIPELINE_RECORD, "instruct") is None
    assert record_fields({"id": 1, "mode": "bare", "fields": None, "base": {"text": "t", "fields": None}}) is None
    assert record_fields({"id": "x", "question": "q", "answer": "a"}) == {"question": "q", "answer": "a"}
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert fields_text(record_fields(chat)) == "q\na"
    assert fields_text(record_fields(PIPELINE_RECORD)) == "q1\na1"


def test_select_fields_counts_skipped_and_rejects_unknown_field():
    unrefined = {**PIPELINE_RECORD, "refine": {**_stage("x", "y"), "fields": None}}
    kept, skipped = select_fields([PIPELINE_RECORD, unrefined], "refine", "f.jsonl")
    assert kept == [{"question": "q1", "answer": "a1"}] and skipped == 1
    with pytest.raises(ConfigError, match="no record has field 'refind'"):
        select_fields([PIPELINE_RECORD], "refind", "f.jsonl")


def test_read_jsonl_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no records"):
        read_jsonl(empty)
    with pytest.raises(ConfigError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ConfigError, match="line 2: invalid JSON"):
        read_jsonl(bad)


def test_diversity_report_with_injected_embedder():
    examples = [{"q": f"text {i}"} for i in range(3)]
    one_hot = lambda texts: np.eye(len(texts))  # noqa: E731  an embedder that makes every record orthogonal
    report = diversity_report("f", examples, 0, one_hot)
    assert report.vendi == pytest.approx(3) and report.mean_similarity == pytest.approx(0)
    same = diversity_report("f", examples, 0, lambda texts: np.ones((len(texts), 4)))
    assert same.vendi == pytest.approx(1) and same.mean_similarity == pytest.approx(1)
    with pytest.raises(ConfigError, match="2 embeddings for 3 texts"):
        diversity_report("f", examples, 0, lambda texts: np.ones((2, 4)))


def test_hash_embedder_is_deterministic_bag_of_words():
    embed = hash_embedder(64)
    a, b, c = normalize(embed(["the cat sat", "sat the CAT", "a dog ran far"]))
    assert a @ b == pytest.approx(1.0) and a @ c < 0.9


def test_check_loading_and_pass_rate(tmp_path, monkeypatch):
    (tmp_path / "mychecks.py").write_text(
        "def ends_with_number(f):\n    return f['answer'].split()[-1].isdigit()\n"
    )
    check = load_check(f"{tmp_path / 'mychecks.py'}:ends_with_number")
    result = run_check("c", check, [{"answer": "so 7"}, {"answer": "seven"}, {"answer": ""}, {"answer": "x 1"}])
    assert (result.passed, result.total, result.errors) == (2, 4, 1)
    assert result.pass_rate == 0.5 and "IndexError" in result.first_error
    monkeypatch.chdir(tmp_path)
    assert load_check("mychecks:ends_with_number")({"answer": "3"})
    assert load_check("json:dumps") is not None
    for spec, message in [("nocolon", "module:function"), ("mychecks:nope", "no function nope"),
                          ("no_such_module_xyz:f", "cannot import"), ("missing.py:f", "no such file")]:
        with pytest.raises(ConfigError, match=message):
            load_check(spec)
