"""The cost model: profiles, how requests are priced (prefill, cache, decode), token statistics,
and `halo-sql calibrate`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from halo_sql.llm.base import OutputSpec
from halo_sql.logical import plan as lp
from halo_sql.logical.llm_call import LLMCall, LLMFunction
from halo_sql.optimizer import estimate
from halo_sql.optimizer.cost import request_cost
from halo_sql.optimizer.profile import BackendProfile, find_profile, profile_path
from halo_sql.optimizer.stats import NullContext, PromptStats, Statistics
from halo_sql.parser.template import parse_template

SIM = BackendProfile.shipped("sim")


def _call(template: str, output: OutputSpec | None = None, function: LLMFunction = LLMFunction.COMPLETE) -> LLMCall:
    return LLMCall(function, parse_template(template), "m", output=output or OutputSpec.text())


def test_shipped_profiles_load_and_decode_steps_grow_with_the_batch() -> None:
    assert SIM.backend == "sim" and not SIM.measured
    default = BackendProfile.shipped("no-such-backend")
    assert default.name == "default"
    assert SIM.decode_step(1) == SIM.decode_step_s
    assert SIM.decode_step(1) < SIM.decode_step(64) < SIM.decode_step(512)


def test_a_calibrated_profile_wins_over_the_shipped_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_PROFILE_DIR", str(tmp_path))
    assert find_profile("sim", None) == SIM
    path = profile_path("sim", None)
    path.write_text(replace(SIM, prefill_tokens_per_s=123.0, measured=True).to_json())
    assert find_profile("sim", None).prefill_tokens_per_s == 123.0


def test_cached_prompt_tokens_are_not_prefilled() -> None:
    cold = request_cost(100, PromptStats(200, 0, 1), SIM)
    warm = request_cost(100, PromptStats(200, 160, 1), SIM)
    assert cold.prompt_tokens == warm.prompt_tokens == 20_000
    assert warm.cached_tokens == 99 * 160  # the first request fills the cache
    assert warm.seconds < cold.seconds


def test_decode_waits_in_waves_when_the_kv_cache_is_small() -> None:
    roomy = request_cost(512, PromptStats(100, 0, 50), SIM)
    cramped = request_cost(512, PromptStats(100, 0, 50), replace(SIM, kv_cache_tokens=1500))
    assert cramped.seconds > roomy.seconds  # 10 sequences at a time instead of 512
    assert cramped.output_tokens == roomy.output_tokens == 512 * 50


def test_longer_answers_cost_more_decode_steps() -> None:
    short = request_cost(10, PromptStats(50, 0, 1), SIM)
    long = request_cost(10, PromptStats(50, 0, 64), SIM)
    assert long.seconds > 10 * short.seconds / 2


def test_prompt_statistics_count_the_static_prefix_in_whole_blocks() -> None:
    stats = Statistics(NullContext(replace(SIM, block_size=4)))
    call = _call("Summarize this review for the weekly report in one line: {t}")
    prompt = stats.prompt_stats(call, None, ("t",))
    prefix_tokens = NullContext().count_tokens("m", "Summarize this review for the weekly report in one line: ")
    assert prompt.cached_tokens % 4 == 0
    assert prefix_tokens - 1 - 4 < prompt.cached_tokens <= prefix_tokens
    boolean = stats.prompt_stats(_call("Late? {t}", OutputSpec.boolean(), LLMFunction.FILTER), None, ("t",))
    assert boolean.output_tokens == 1
    labels = stats.prompt_stats(_call("Mood {t}", OutputSpec.choice(["happy", "sad"]), LLMFunction.CLASSIFY), None, ("t",))
    assert labels.output_tokens == 1
    text = stats.prompt_stats(call, None, ("t",))
    assert text.output_tokens == SIM.text_output_tokens


def test_an_identical_call_below_is_answered_from_memo() -> None:
    call = _call("Summarize {x}")
    source = lp.DuckDBQuery("SELECT 'a' AS \"x\"")
    once = estimate(lp.LLMMap(source, call, ("x",), "c1"))
    twice = estimate(lp.LLMMap(lp.LLMMap(source, call, ("x",), "c1"), call, ("x",), "c2"))
    assert twice.requests == once.requests
    assert twice.seconds == pytest.approx(once.seconds, rel=1e-3)


def test_a_limit_above_a_map_prices_one_batch_and_below_it_only_the_rows_kept() -> None:
    class Rows(NullContext):
        def run_sql(self, sql: str) -> Any:
            import duckdb

            return duckdb.sql(sql).fetchall()

    source = lp.DuckDBQuery("SELECT 'review ' || range AS \"x\" FROM range(5000)")
    call = _call("Summarize {x}")
    above = estimate(lp.Limit(lp.LLMMap(source, call, ("x",), "c"), 3), Rows())
    below = estimate(lp.LLMMap(lp.Limit(source, 3), call, ("x",), "c"), Rows())
    everything = estimate(lp.LLMMap(source, call, ("x",), "c"), Rows())
    assert below.requests == 3
    assert above.requests == 1024  # the map answers whole slices of its input
    assert everything.requests == 5000


def test_calibrate_writes_a_measured_profile(tmp_path: Path) -> None:
    from halo_sql.optimizer.calibrate import main

    out = tmp_path / "sim.json"
    assert main(["--backend", "sim", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    profile = BackendProfile.from_dict(data)
    assert profile.measured and profile.backend == "sim"
    assert profile.prefill_tokens_per_s > 0 and profile.decode_step_s > 0
    assert profile.block_size == 32 and profile.kv_cache_tokens == 1 << 20
    assert 1 <= profile.text_output_tokens <= 64


def test_the_cli_has_a_calibrate_command() -> None:
    from halo_sql.cli import COMMANDS

    assert "calibrate" in COMMANDS
