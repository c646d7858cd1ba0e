"""Golden fixtures for every optimizer rule: where it fires and where it must not.

Each `tests/golden/rules/<rule>.test` holds cases:

    -- case: what the case shows
    -- expect: chosen | fires | no fire
    -- sql                      (or `-- plan`, a plan written as a rule-language term)
    SELECT ...
    -- optimized
    <EXPLAIN text of the optimized plan>

`chosen`: the rule's rewrite is part of the chosen plan; `fires`: the rule produced an
alternative (the cost model may keep another); `no fire`: the rule produced nothing. Every case
also runs with all rules on and all rules off and must give the same rows (sim backend).
Regenerate the expected plans with HALO_UPDATE_GOLDEN=1 (then read the diff).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import halo_sql
from halo_sql.errors import ParseError, ProgrammingError
from halo_sql.executor.runtime import StatementStats
from halo_sql.llm.base import OutputSpec
from halo_sql.logical import plan as lp
from halo_sql.logical.llm_call import LLMCall, LLMFunction
from halo_sql.optimizer import OptimizerSettings, optimize, rule_names
from halo_sql.optimizer.functions import HELPERS
from halo_sql.optimizer.rules import evaluate, load_registry, parse_rule, parse_term
from halo_sql.optimizer.session_context import SessionContext
from halo_sql.parser.template import parse_template

GOLDEN = Path(__file__).parent / "golden" / "rules"
UPDATE = bool(os.environ.get("HALO_UPDATE_GOLDEN"))
SETUP = (GOLDEN / "setup.sql").read_text()


@dataclass
class Case:
    file: Path
    name: str
    expect: str
    kind: str  # "sql" | "plan"
    source: str
    optimized: str

    @property
    def rule(self) -> str:
        return self.file.stem


_DIRECTIVE = re.compile(r"^-- (case: .*|expect: .*|sql|plan|optimized)\s*$")


def read_cases(path: Path) -> list[Case]:
    cases: list[Case] = []
    current: dict[str, str] = {}
    section = None
    buffers: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        match = _DIRECTIVE.match(line)
        if match:
            word = match.group(1)
            if word.startswith("case: "):
                if current:
                    cases.append(_case(path, current, buffers))
                current, buffers, section = {"name": word[6:].strip()}, {}, None
            elif word.startswith("expect: "):
                current["expect"] = word[8:].strip()
            else:
                section = word
                buffers[section] = []
            continue
        if section is not None:
            buffers[section].append(line)
    if current:
        cases.append(_case(path, current, buffers))
    return cases


def _case(path: Path, fields: dict[str, str], buffers: dict[str, list[str]]) -> Case:
    kind = "sql" if "sql" in buffers else "plan"
    source = "\n".join(buffers.get(kind, [])).strip()
    optimized = "\n".join(buffers.get("optimized", [])).strip()
    return Case(path, fields["name"], fields.get("expect", ""), kind, source, optimized)


def write_cases(path: Path, cases: list[Case], header: str) -> None:
    out = [header.rstrip(), ""] if header.strip() else []
    for case in cases:
        out += [f"-- case: {case.name}", f"-- expect: {case.expect}", f"-- {case.kind}", case.source]
        out += ["-- optimized", case.optimized, ""]
    path.write_text("\n".join(out))


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("-- case:"):
            break
        lines.append(line)
    return "\n".join(lines)


ALL_CASES = [c for f in sorted(GOLDEN.glob("*.test")) for c in read_cases(f)]


# -- plans written by hand ---------------------------------------------------------------------


def _call(function: LLMFunction, template: str, output: OutputSpec | None = None) -> LLMCall:
    return LLMCall(function, parse_template(template), "default", output=output or OutputSpec.text())


FIXTURE_HELPERS = {
    **HELPERS,
    "llm": lambda ctx, t: _call(LLMFunction.COMPLETE, t),
    "llm_filter": lambda ctx, t: _call(LLMFunction.FILTER, t, OutputSpec.boolean()),
    "llm_classify": lambda ctx, t, labels: _call(LLMFunction.CLASSIFY, t, OutputSpec.choice(labels)),
    "input": lambda ctx, name, plan: lp.NamedInput(name, plan),
}


def build_plan(text: str) -> lp.PlanNode:
    node = evaluate(parse_term(text), {}, FIXTURE_HELPERS, None)  # type: ignore[arg-type]
    assert isinstance(node, lp.PlanNode)
    return node


# -- running cases -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def con() -> Iterator[halo_sql.Connection]:
    connection = halo_sql.connect(backend="sim")
    connection.sql(SETUP)
    connection.sql("SET optimizer_sample_rows = 0")
    yield connection
    connection.close()


def _optimized(con: halo_sql.Connection, case: Case, settings: OptimizerSettings) -> lp.StatementPlan:
    session = con.session
    if case.kind == "sql":
        session.optimizer_settings = OptimizerSettings(disabled=frozenset(rule_names()), sample_rows=0)
        raw = session.plan(case.source)
    else:
        raw = lp.StatementPlan(build_plan(case.source))
    return optimize(raw, SessionContext(session, None, sample_rows=0), settings)


def _rows(con: halo_sql.Connection, plan: lp.StatementPlan) -> list[str]:
    table = con.session._run_plan(plan, StatementStats(), None)
    assert table is not None
    return sorted(map(repr, table.to_pylist()))


OFF_BY_DEFAULT = {r.name for r in load_registry().rules if r.off_by_default}


@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c.rule}:{c.name}" for c in ALL_CASES])
def test_rule_golden(con: halo_sql.Connection, case: Case) -> None:
    # A rule that changes answers is off by default: its cases switch it on.
    enabled = frozenset({case.rule}) & OFF_BY_DEFAULT
    on = OptimizerSettings(sample_rows=0, enabled=enabled)
    plan = _optimized(con, case, on)
    report = plan.optimizer
    assert report is not None, plan.notes
    text = lp.explain(plan)
    if UPDATE:
        cases = read_cases(case.file)
        for c in cases:
            if c.name == case.name:
                c.optimized = text
        write_cases(case.file, cases, _header(case.file))
    else:
        assert text == case.optimized
    fired = report.search.fired.get(case.rule, 0)
    if case.expect == "chosen":
        assert case.rule in report.rules, f"{case.rule} not in the chosen plan: {report.rules}"
    elif case.expect == "fires":
        assert fired or case.rule in report.rules, f"{case.rule} produced no rewrite"
    elif case.expect == "no fire":
        assert not fired and case.rule not in report.rules, f"{case.rule} fired {fired} time(s)"
    else:
        pytest.fail(f"{case.file.name}: case {case.name!r} needs '-- expect: chosen|fires|no fire'")
    off = _optimized(con, case, OptimizerSettings(disabled=frozenset(rule_names()), sample_rows=0))
    if case.rule in OFF_BY_DEFAULT and case.expect != "no fire":
        _rows(con, plan)  # it runs; its answers may differ: that is why the rule is off
    else:
        assert _rows(con, plan) == _rows(con, off)


# -- the registry ------------------------------------------------------------------------------


def test_every_rule_has_a_golden_file_with_cases_that_fire_and_that_must_not() -> None:
    for name in rule_names():
        path = GOLDEN / f"{name}.test"
        assert path.is_file(), f"rule {name} has no golden fixture {path.name}"
        expects = {c.expect for c in read_cases(path)}
        assert expects & {"chosen", "fires"}, f"{path.name}: no case where the rule fires"
        assert "no fire" in expects, f"{path.name}: no case where the rule must not fire"


def test_every_rule_file_states_its_rewrite_and_when_it_must_not_fire() -> None:
    for rule in load_registry().rules:
        header = "\n".join(line for line in rule.source.splitlines() if line.startswith("#"))
        assert "Rewrite:" in header, f"{rule.name}: header must state the rewrite"
        assert "Must not fire:" in header, f"{rule.name}: header must say when it must not fire"


def test_a_rule_switched_off_by_name_does_not_fire(con: halo_sql.Connection) -> None:
    sql = (
        "WITH t AS (SELECT id, LLM('Summarize {text}') AS s FROM reviews) "
        "SELECT count(*) AS n FROM t"
    )
    con.sql("RESET disable_rules")
    assert "remove_unused_llm_map" in con.session.plan(sql).optimizer.rules
    con.sql("SET disable_rules = 'remove_unused_llm_map, prune_query_columns'")
    try:
        report = con.session.plan(sql).optimizer
        assert "remove_unused_llm_map" not in report.rules
        assert not report.search.fired.get("remove_unused_llm_map")
        assert con.sql(sql).to_pylist() == [{"n": 200}]
        assert con.session.last_stats.llm_requests == 200  # the map runs: nobody removed it
    finally:
        con.sql("RESET disable_rules")
    con.sql(sql)
    assert con.session.last_stats.llm_requests == 0


def test_an_unknown_rule_name_is_an_error_naming_the_known_ones(con: halo_sql.Connection) -> None:
    with pytest.raises(ProgrammingError, match="unknown optimizer rule.*no_such_rule.*merge_limits"):
        con.sql("SET disable_rules = 'no_such_rule'")


def test_a_malformed_rule_names_its_line() -> None:
    with pytest.raises(ParseError, match=r"bad.rule:2:"):
        parse_rule("rule broken\nmatch Limit(count = )\nreplace $x", origin="bad.rule")
    with pytest.raises(ParseError, match="Limit has no field 'size'"):
        parse_rule("rule r match Limit(size = $n) replace Limit(count = $n, child = $n)")
