"""The bundled demo pair loads in the engine and decodes exactly like transformers."""

from bare_engine import LLM, SamplingParams
from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR, load_seeds
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates
from bare_engine.testing import hf_greedy


def test_bundled_models_greedy_parity_with_transformers():
    seeds = [{"question": s["question"], "answer": s["answer"]} for s in load_seeds()[:3]]
    for model_dir in (BASE_MODEL_DIR, INSTRUCT_MODEL_DIR):
        llm = LLM(model_dir)
        tok = llm.engine.tokenizer()
        prompts = [tok(Templates().base(DEFAULT_TASK, seeds)).input_ids, tok("Question: Mia has")["input_ids"]]
        params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        assert got == hf_greedy(model_dir, prompts, 40)
