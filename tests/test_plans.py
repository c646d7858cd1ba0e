"""Golden plans: each `tests/golden/plans/<case>.sql` has its plan's text in `<case>.plan`.

The leading `--` lines of a `.sql` file say what the case shows; the rest is the statement,
planned against the shop tables (tests/conftest.py) with the models `default` and `other`. The
text is `halo_sql.logical.plan.explain` of the plan that runs (`Session.plan`: built, then
optimized), without cost estimates, so it changes only when a plan does. After an intended
planner or optimizer change, rewrite the `.plan` files with
`HALO_UPDATE_GOLDENS=1 pytest tests/test_plans.py` (or `--update-goldens`) and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from halo_sql.frontends.dbapi import Connection
from halo_sql.logical.plan import explain

GOLDEN = Path(__file__).parent / "golden" / "plans"
CASES = sorted(GOLDEN.glob("*.sql"))


def statement_of(path: Path) -> str:
    lines = path.read_text().splitlines()
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip()


def plan_text(con: Connection, sql: str) -> str:
    return explain(con.session.plan(sql)) + "\n"


@pytest.fixture
def planner(shop: Connection) -> Connection:
    shop.sql("CREATE MODEL other USING sim WITH (seed => 1)")
    return shop


def test_every_case_has_a_statement() -> None:
    assert len(CASES) >= 30
    assert all(statement_of(case) for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_plan_matches_golden(case: Path, planner: Connection, update_goldens: bool) -> None:
    actual = plan_text(planner, statement_of(case))
    golden = case.with_suffix(".plan")
    if update_goldens or not golden.exists():
        golden.write_text(actual)
        if not update_goldens:
            pytest.fail(f"{golden.name} was missing and has been written: review and commit it")
    assert actual == golden.read_text()


def test_plans_are_deterministic_across_connections(shop: Connection, shop_sql: str) -> None:
    import halo_sql

    other = halo_sql.connect(backend="sim")
    other.sql(shop_sql)
    sql = statement_of(GOLDEN / "04_limit_stops_llm_filter_early.sql")
    assert plan_text(shop, sql) == plan_text(other, sql) == plan_text(shop, sql)


def test_explain_statement_shows_the_plan(shop: Connection) -> None:
    sql = statement_of(GOLDEN / "03_relational_predicate_runs_first.sql")
    shown = shop.explain(sql)
    for line in plan_text(shop, sql).splitlines():
        assert line.split(": ", 1)[0] in shown  # every operator, whatever else EXPLAIN adds
