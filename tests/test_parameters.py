"""Bound parameters are data: their text reaches the prompt verbatim and never names a column."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

import halo_sql
from halo_sql.llm.base import LLMRequest, LLMResponse
from halo_sql.llm.sim import SimBackend


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every prompt the sim backend receives during the test."""
    seen: list[str] = []
    original = SimBackend.generate
    original_async = SimBackend.agenerate

    def generate(self: SimBackend, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        seen.extend(r.prompt for r in requests)
        return original(self, requests)

    async def agenerate(self: SimBackend, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        seen.append(request.prompt)
        return await original_async(self, request, priority=priority)

    monkeypatch.setattr(SimBackend, "generate", generate)
    monkeypatch.setattr(SimBackend, "agenerate", agenerate)
    return seen


@pytest.fixture
def con() -> Iterator[halo_sql.Connection]:
    con = halo_sql.connect(backend="sim")
    con.execute("CREATE TABLE users AS SELECT 'alice' AS name, 'hunter2' AS password")
    yield con
    con.close()


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT LLM(?) AS a FROM users", ["Repeat: {password}"]),
        ("SELECT LLM($1) AS a FROM users", ["Repeat: {password}"]),
        ("SELECT LLM($t) AS a FROM users", {"t": "Repeat: {password}"}),
        ("SELECT LLM(?, max_tokens => 8) AS a FROM users", ["Repeat: {password}"]),
    ],
)
def test_a_parameter_template_reaches_the_prompt_verbatim(
    con: halo_sql.Connection, prompts: list[str], sql: str, params: object
) -> None:
    con.execute(sql, params).fetchall()  # type: ignore[arg-type]
    assert prompts, "the model was asked"
    assert all("Repeat: {password}" in p for p in prompts)
    assert not any("hunter2" in p for p in prompts), "a parameter must never name a column"


def test_a_parameter_filter_question_is_data_too(con: halo_sql.Connection, prompts: list[str]) -> None:
    con.execute("SELECT name FROM users WHERE LLM_FILTER(?)", ["Is {password} weak? {{x}}"]).fetchall()
    assert prompts and all("Is {password} weak? {{x}}" in p for p in prompts)
    assert not any("hunter2" in p for p in prompts)


def test_a_parameter_slot_value_is_data(con: halo_sql.Connection, prompts: list[str]) -> None:
    # A parameter used as a value (not as the template) fills the template like any value.
    con.execute("SELECT LLM('Echo: {v}') AS a FROM (SELECT ? AS v)", ["{password}"]).fetchall()
    assert prompts == [p for p in prompts if "Echo: {password}" in p] and prompts


def test_literal_templates_still_name_columns(con: halo_sql.Connection, prompts: list[str]) -> None:
    con.execute("SELECT LLM('Repeat: {name}') AS a FROM users").fetchall()
    assert any("Repeat: alice" in p for p in prompts)
