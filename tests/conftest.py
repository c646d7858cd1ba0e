"""Shared pytest fixtures. Each section belongs to one part of halo-sql; keep them apart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from halo_sql.llm.vllm_backend import VLLMBackend

# ---------------------------------------------------------------------------------------------
# LLM backends: the tiny test model and ONE vLLM engine for the whole session.
# Starting a vLLM engine takes ~20 s on CPU, so every test that needs the real engine shares
# `vllm_backend`; tests must not close it or change its state (a prefix-cache reset, say).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the random-weight tiny Llama model: $HALO_TINY_MODEL if set, else written
    once per session into a temporary directory."""
    given = os.environ.get("HALO_TINY_MODEL")
    if given:
        return Path(given)
    from halo_sql.llm.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def vllm_backend(tiny_model_dir: Path) -> Iterator[VLLMBackend]:
    """One VLLMBackend on the tiny model, shared by the session and closed at its end.

    Skips the test only when vLLM itself cannot be imported; any other start failure is an error.
    """
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"vLLM is not importable here ({exc}); install halo-sql[cpu] to run this test")
    from halo_sql.llm.registry import ModelSpec, backend_for, shutdown_all

    # Through the process-wide registry: `halo_sql.connect(model=str(tiny_model_dir))` in any
    # test then reuses this very engine instead of starting a second one.
    backend = backend_for(ModelSpec("tiny", "vllm", str(tiny_model_dir)))
    yield backend  # type: ignore[misc]
    shutdown_all()


# ---------------------------------------------------------------------------------------------
