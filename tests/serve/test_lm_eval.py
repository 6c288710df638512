"""lm-eval's loglikelihood path (`local-completions`: echo + logprobs over token-id prompts) against the
server, on a multiple-choice task read from a local JSON file; every loglikelihood equals transformers'."""

import json

import pytest
import torch

from bare_engine import EngineConfig, LLMEngine
from bare_engine.demo import BASE_MODEL_DIR
from bare_engine.serve.launch import ServerThread

lm_eval = pytest.importorskip("lm_eval")

DOCS = [
    {"question": "Mia has 3 apples and buys 4 more. How many apples does she have?", "choices": ["7", "12", "1"],
     "label": 0},
    {"question": "Tom has 10 pens and gives away 6. How many pens are left?", "choices": ["16", "4"], "label": 1},
    {"question": "A box holds 5 eggs. How many eggs are in 2 boxes?", "choices": ["10", "7", "3"], "label": 0},
]
TASK = """task: bare_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
"""


def transformers_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer(context).input_ids
    whole = tokenizer(context + continuation).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


@pytest.mark.slow
def test_multiple_choice_loglikelihoods_through_local_completions(tmp_path):
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "task.yaml").write_text(TASK.format(data=data))
    engine = LLMEngine({"base": BASE_MODEL_DIR}, EngineConfig(num_kv_blocks=256, max_model_len=256))
    with ServerThread(engine, max_waiting=64) as srv:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"model=base,base_url={srv.url}/v1/completions,tokenizer={BASE_MODEL_DIR},"
                       "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1",
            tasks=["bare_local_mc"], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True,
        )
    model = AutoModelForCausalLM.from_pretrained(str(BASE_MODEL_DIR), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(BASE_MODEL_DIR))
    samples = results["samples"]["bare_local_mc"]
    assert len(samples) == len(DOCS)
    correct = 0
    for sample in samples:
        doc = sample["doc"]
        context = f"Question: {doc['question']}\nAnswer:"
        got = [resp[0][0] for resp in sample["resps"]]
        expected = [transformers_loglikelihood(model, tokenizer, context, " " + c) for c in doc["choices"]]
        assert got == pytest.approx(expected, abs=1e-3)
        correct += max(range(len(expected)), key=expected.__getitem__) == doc["label"]
    assert results["results"]["bare_local_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))
