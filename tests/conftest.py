"""Shared pytest fixtures. Each section belongs to one part of halo-sql; keep them apart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vllm_server import VLLMServer

    from halo_sql.frontends.dbapi import Connection
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


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """ONE local Ray instance for the session, started and at the end stopped by halo-sql's own
    code (halo_sql.llm.ray_replicas): models created with cluster => 'ray' run their actors on it
    instead of each starting one. Skips when Ray is not importable."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"Ray is not importable here ({exc}); install halo-sql[ray] to run this test")
    from halo_sql.llm import ray_replicas

    lease = ray_replicas.acquire("ray")
    try:
        yield
    finally:
        lease.release()  # Ray stops once the models using it are closed too


@pytest.fixture(scope="session")
def vllm_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """ONE real vLLM OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`)
    on 127.0.0.1 with the tiny model served as 'tiny', for the `openai` backend's tests; always
    stopped at the end of the session. A test that stops it must leave it running again, or
    call `start()` (fault tests do). Skips only when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"vLLM is not importable here ({exc}); install halo-sql[cpu] to run this test")
    from vllm_server import VLLMServer

    server = VLLMServer(tiny_model_dir, tmp_path_factory.mktemp("vllm-server"))
    try:
        yield server.start()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Engine specification tests (test_templates, test_statements, test_plans, test_engine,
# test_errors, test_sim_backend, test_equivalence): golden-file updates, a small hand-made shop
# database, and TPC-H at scale 0.01. All on the deterministic sim backend.
# ---------------------------------------------------------------------------------------------

SHOP_SQL = """
CREATE TABLE products (id INTEGER, name VARCHAR, category VARCHAR);
INSERT INTO products VALUES
    (1, 'kettle', 'kitchen'), (2, 'toaster', 'kitchen'), (3, 'lamp', 'home'), (4, 'chair', 'home');
CREATE TABLE reviews (id INTEGER, product_id INTEGER, stars INTEGER, text VARCHAR);
INSERT INTO reviews VALUES
    (1, 1, 1, 'Arrived two weeks late and the box was crushed.'),
    (2, 1, 5, 'Boils water fast. Love it.'),
    (3, 2, 2, 'Burns one side of the bread.'),
    (4, 2, 4, 'Good value for the price.'),
    (5, 3, 1, 'The courier left it in the rain; it never worked.'),
    (6, 3, 3, NULL),
    (7, 4, 5, 'Comfortable and sturdy.'),
    (8, 4, 2, 'Arrived two weeks late and the box was crushed.');
"""
"""Eight reviews of four products: one review has no text (NULL), two share the same text."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="rewrite golden files (tests/golden/) from the current output; same as "
        "HALO_UPDATE_GOLDENS=1",
    )


@pytest.fixture(scope="session")
def update_goldens(request: pytest.FixtureRequest) -> bool:
    """True when golden files should be rewritten instead of compared."""
    flag = bool(request.config.getoption("--update-goldens"))
    return flag or os.environ.get("HALO_UPDATE_GOLDENS", "") not in ("", "0")


@pytest.fixture(scope="session")
def shop_sql() -> str:
    """The script that creates the shop tables (for tests that need a second such database)."""
    return SHOP_SQL


@pytest.fixture
def shop() -> Iterator[Connection]:
    """A fresh in-memory connection on the sim backend with the `products`/`reviews` tables."""
    import halo_sql

    con = halo_sql.connect(backend="sim")
    con.sql(SHOP_SQL)
    yield con
    con.close()


@pytest.fixture(scope="session")
def tpch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TPC-H at scale 0.01 as Parquet, generated once per session ($HALO_CACHE_DIR if set)."""
    from halo_sql.datasets.tpch import generate_tpch

    given = os.environ.get("HALO_CACHE_DIR")
    return generate_tpch(0.01, given or tmp_path_factory.mktemp("tpch"))


@pytest.fixture(scope="session")
def tpch(tpch_dir: Path) -> Iterator[Connection]:
    """One sim connection with TPC-H (scale 0.01) loaded, shared by the session: read only."""
    import halo_sql
    from halo_sql.datasets.tpch import load_tpch

    con = halo_sql.connect(backend="sim")
    load_tpch(con.session.connection, 0.01, tpch_dir.parent)
    yield con
    con.close()


# ---------------------------------------------------------------------------------------------
# Engine logging (halo_sql/llm/logs.py): front ends quiet vLLM through environment variables.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _engine_logging_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that run `halo_sql.cli.main` in-process quiet the engine's logging; restore those
    variables after each test so the session's shared vLLM engine logs as configured."""
    from halo_sql.llm.logs import QUIET_ENVIRONMENT

    for name in QUIET_ENVIRONMENT:
        original = os.environ.get(name)
        monkeypatch.setenv(name, original or "")  # recorded, so teardown restores or removes it
        if original is None:
            monkeypatch.delenv(name)
