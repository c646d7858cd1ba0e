"""The tiny test model: deterministic files that transformers (and so vLLM) can load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from halo_sql.llm.tiny_model import write_tiny_model


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def test_writing_the_tiny_model_twice_gives_identical_files(tmp_path: Path) -> None:
    first = _digests(write_tiny_model(tmp_path / "a"))
    second = _digests(write_tiny_model(tmp_path / "b"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(first)
    assert first == second


def test_tiny_model_loads_with_transformers(tiny_model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer("the customer order was late", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert tokenizer.decode(ids[0]) == "the customer order was late"
