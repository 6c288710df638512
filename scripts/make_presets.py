"""Write bare_engine/pipeline/presets/ from the BARE paper's prompts and seed examples.

Input: the JSON extracted from the authors' code (github.com/pgasawa/BARE @3204fdbe,
bare/src/tasks/*_tasks.py, MIT licence), e.g. /work/shared/anchors/bare-repo/extracted/.
Each task's prompt texts are kept verbatim; the example layout (markers, field labels)
follows the code's format_prompt_examples, and parsing its extract_content.

    python scripts/make_presets.py /path/to/extracted
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "bare_engine" / "pipeline" / "presets"
SOURCE = "github.com/pgasawa/BARE @3204fdbe813bfaeedb90db95b7b1347a0a9422b3"
START, END = "EXAMPLE START\n", "\nEXAMPLE DONE"

RAFT_EXAMPLE = "##Context:\n{context}\n##Question: {question}\n##Reason: {reason} ##Answer: {answer}"
RAFT_MARKERS = {"question": "##Question:", "reason": "##Reason:", "answer": "##Answer:"}
LCB_FIELDS = ["question", "test_input", "reasoning", "answer"]

TASKS = {
    "gsm8k": dict(
        file="gsm8k", seeds="gsm8k_static_examples", prompts=("gsm8k_base_prompt", "gsm8k_refine_prompt",
                                                                "gsm8k_instruct_fewshot_prompt"),
        fields=["question", "answer"], example="Question:\n{question}\nAnswer:\n{answer}",
        markers={"question": "Question:", "answer": "Answer:"},
        task="GSM8K: grade-school math word problems; a question and a brief worked answer ending '#### <number>'.",
    ),
    "enron-spam": dict(
        file="enron", seeds="spam_static_examples",
        prompts=("spam_base_prompt", "spam_refinement_prompt", "spam_instruct_fewshot_prompt"),
        fields=["email"], example="{email}", markers={"email": ""}, start="Email {index}:\n",
        task="Enron spam: spam emails in the Enron dataset's style (lower case, punctuation spaced out).",
    ),
    "enron-ham": dict(
        file="enron", seeds="ham_static_examples",
        prompts=("ham_base_prompt", "ham_refinement_prompt", "ham_instruct_fewshot_prompt"),
        fields=["email"], example="{email}", markers={"email": ""}, start="Email {index}:\n",
        task="Enron ham: legitimate work emails in the Enron dataset's style.",
    ),
    "newsgroups": dict(
        file="newsgroups", seeds="newsgroups_static_examples",
        prompts=("newsgroups_base_prompt", "newsgroups_refinement_prompt", "newsgroups_instruct_fewshot_prompt"),
        fields=["newsgroup", "message"], example="Newsgroup:\n{newsgroup}\nMessage:\n{message}",
        markers={"newsgroup": "Newsgroup:", "message": "Message:"},
        task="20 Newsgroups: a Usenet message and the newsgroup it was posted to.",
    ),
    "lcb-top": dict(
        file="lcb", seeds="lcb_static_examples",
        prompts=("lcb_base_prompt", "lcb_refine_prompt", "lcb_instruct_fewshot_prompt"),
        fields=LCB_FIELDS,
        example="Question:\n{question}\nTest Input:\n{test_input}\nReasoning:\n{reasoning}\nAnswer:\n{answer}",
        markers={"question": "Question:", "test_input": "Test Input:", "reasoning": "Reasoning:", "answer": "Answer:"},
        task="LiveCodeBench test-output prediction: a programming task, a test input, reasoning and the output.",
    ),
    "hotpotqa": dict(
        file="hotpotqa", seeds="hotpotqa_static_examples",
        prompts=("hotpotqa_base_prompt", "hotpotqa_refine_prompt", "hotpotqa_instruct_fewshot_prompt"),
        fields=["context", "question", "reason", "answer"], example=RAFT_EXAMPLE, markers=RAFT_MARKERS, raft=True,
        task="HotpotQA, RAFT style: for a given context, a question, quoted reasoning and a short answer.",
    ),
    "pubmedqa": dict(
        file="pubmedqa", seeds="pubmedqa_static_examples",
        prompts=("pubmedqa_base_prompt", "pubmedqa_refine_prompt", "pubmedqa_instruct_fewshot_prompt"),
        fields=["context", "question", "reason", "answer"], example=RAFT_EXAMPLE, markers=RAFT_MARKERS, raft=True,
        completion_prefix="##Question: ",
        task="PubMedQA, RAFT style: for a given abstract, a question, quoted reasoning and a yes/no/maybe answer.",
    ),
}


def toml_string(value: str) -> str:
    if len(value) > 80 and "\n" in value and "'''" not in value and not value.endswith("'") and "\r" not in value:
        return "'''\n" + value + "'''"
    return json.dumps(value, ensure_ascii=False)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def preset(name: str, spec: dict, prompts: dict, source: str) -> tuple[dict, str]:
    base, refine, instruct = (prompts[k] for k in spec["prompts"])
    top = {
        "task": spec["task"],
        "seeds": f"{name}.seeds.jsonl",
        "fields": spec["fields"],
        "k": 3,
        "seed_order": "fixed",
        "system_prompt": "",
    }
    if spec.get("raft"):
        top["grounding"] = f"{name}.seeds.jsonl"
        top["grounding_fields"] = ["context"]
    sampling = {"base": 0.7, "refine": 0.7, "instruct": 1.0}
    templates = {
        "start_marker": spec.get("start", START),
        "end_marker": END,
        "separator": "\n\n",
        "example": spec["example"],
        "field_markers": spec["markers"],
        "chat_markers": False,
        "completion_prefix": spec.get("completion_prefix", ""),
        "base_prompt": base,
        "refine_prompt": refine,
        "instruct_prompt": instruct,
    }
    lines = [
        f"# BARE paper task preset: {name}  (bare-engine run --preset {name})",
        f"# Prompts and seed examples from {source} (MIT licence, see LICENSE-BARE.txt),",
        "# written by scripts/make_presets.py. Every key can be overridden by a config file or a flag.",
    ]
    if spec.get("raft"):
        lines.append("# RAFT style: each candidate is grounded in a context, row i % rows of `grounding` for candidate i.")
        lines.append("# The default grounding is the seed examples' own contexts: pass --grounding contexts.jsonl.")
    lines.append("")
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for stage, temperature in sampling.items():
        lines += ["", f"[sampling.{stage}]", f"temperature = {temperature}", "max_tokens = 1000"]
    lines += ["", "[templates]"] + [f"{k} = {toml_value(v)}" for k, v in templates.items()]
    text = "\n".join(lines) + "\n"
    data = tomllib.loads(text)
    assert data["templates"] == templates and all(data[k] == v for k, v in top.items()), name
    return data, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extracted", type=Path, help="folder of <task>_prompts.json and <task>_seeds.json")
    args = parser.parse_args()
    for name, spec in TASKS.items():
        prompts = json.loads((args.extracted / f"{spec['file']}_prompts.json").read_text(encoding="utf-8"))
        seeds = json.loads((args.extracted / f"{spec['file']}_seeds.json").read_text(encoding="utf-8"))
        source = prompts["source"].split(" (")[0]
        _, text = preset(name, spec, prompts, source)
        (OUT / f"{name}.toml").write_text(text, encoding="utf-8")
        rows = [{"id": f"{name}-{i}", **{f: ex[f] for f in spec["fields"]}} for i, ex in enumerate(seeds[spec["seeds"]])]
        assert len(rows) == 3
        with open(OUT / f"{name}.seeds.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} seeds, fields {spec['fields']}")


if __name__ == "__main__":
    main()
