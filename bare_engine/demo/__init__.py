"""The bundled demo: a toy world of arithmetic word problems and a tiny base/instruct pair
trained on it (scripts/train_demo.py), used by `bare-engine run` with no arguments."""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
MODELS_DIR = DEMO_DIR / "models"
BASE_MODEL_DIR = MODELS_DIR / "base"
INSTRUCT_MODEL_DIR = MODELS_DIR / "instruct"
SEEDS_PATH = DEMO_DIR / "data" / "seeds.jsonl"


def load_seeds(path: Path = SEEDS_PATH) -> list[dict]:
    """The shipped seed problems: [{"id", "question", "answer"}, ...]."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
