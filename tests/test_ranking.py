"""llm_rerank, llm_first, llm_last: a ranking is the model's full permutation or it is NULL (and
counted in invalid_answers); groups too large for one prompt are merged (rerank) or decided by a
tournament of chunk winners (first/last), never concatenated chunk by chunk."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from agent_script import use_backend

import halo_sql
from halo_sql.llm.base import LLMRequest, LLMResponse

Answer = Callable[[list[int]], Any]
"""Given the items' scores in prompt order, the JSON list the model answers."""


def best_first(scores: list[int]) -> list[int]:
    return sorted(range(1, len(scores) + 1), key=lambda n: -scores[n - 1])


@dataclass
class RankingModel:
    """Ranks the numbered items of a prompt by their `score` field (an oracle), or answers
    whatever `answer` makes of the scores. Records every batch it was sent."""

    answer: Answer = best_first
    context_window: int = 1 << 20
    batches: list[list[str]] = field(default_factory=list)
    name: str = "ranking-oracle"

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        self.batches.append([r.prompt for r in requests])
        out = []
        for request in requests:
            items = re.findall(r"^\d+\. (.*)$", request.prompt.split("Items:\n", 1)[1], re.M)
            scores = [int(json.loads(item)["score"]) for item in items]
            text = json.dumps(self.answer(scores))
            out.append(LLMResponse(text, self.count_tokens(request.prompt), 0, 1))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        pass


@pytest.fixture
def con() -> Iterator[halo_sql.Connection]:
    con = halo_sql.connect(backend="sim")
    yield con
    con.close()


def make_groups(con: halo_sql.Connection, sizes: list[int], seed: int = 7) -> dict[int, list[int]]:
    """Table `items(g, id, score)`: group g has sizes[g] items with distinct shuffled scores."""
    rng = random.Random(seed)
    rows, scores = [], {}
    for g, size in enumerate(sizes):
        values = rng.sample(range(1000), size)
        scores[g] = values
        rows += [f"({g}, {i}, {v})" for i, v in enumerate(values)]
    con.sql(f"CREATE OR REPLACE TABLE items AS SELECT * FROM (VALUES {', '.join(rows)}) t(g, id, score)")
    return scores


ARGS = "{'model_name': 'default'}, {'prompt': 'Best first'}, {'id': id, 'score': score}"


def ranked(con: halo_sql.Connection) -> dict[int, dict[str, Any]]:
    table = con.sql(
        f"SELECT g, llm_rerank({ARGS}) AS ranked, llm_first({ARGS}) AS best, "
        f"llm_last({ARGS}) AS worst FROM items GROUP BY g ORDER BY g"
    )
    out = {}
    for row in table.to_pylist():
        out[row["g"]] = {
            "ranked": None if row["ranked"] is None else [r["score"] for r in json.loads(row["ranked"])],
            "best": None if row["best"] is None else json.loads(row["best"])["score"],
            "worst": None if row["worst"] is None else json.loads(row["worst"])["score"],
        }
    return out


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda s: best_first(s)[:2], id="leaves-items-out"),
        pytest.param(lambda s: best_first(s)[:1] * len(s), id="repeats-an-item"),
        pytest.param(lambda s: [*best_first(s)[:-1], len(s) + 1], id="names-a-missing-item"),
        pytest.param(lambda s: [], id="empty"),
    ],
)
def test_a_ranking_that_is_not_a_permutation_is_null_and_counted(
    con: halo_sql.Connection, answer: Answer
) -> None:
    make_groups(con, [4, 5])
    use_backend(con, RankingModel(answer))
    got = ranked(con)
    assert got == {g: {"ranked": None, "best": None, "worst": None} for g in (0, 1)}
    assert con.stats()["invalid_answers"] == 6  # 2 groups x 3 functions, one request each


def test_a_full_ranking_is_followed_exactly(con: halo_sql.Connection) -> None:
    scores = make_groups(con, [5, 3])
    use_backend(con, RankingModel())
    got = ranked(con)
    for g, values in scores.items():
        assert got[g] == {"ranked": sorted(values, reverse=True), "best": max(values),
                          "worst": min(values)}
    assert con.stats()["invalid_answers"] == 0


def test_groups_larger_than_a_prompt_are_merged_not_concatenated(con: halo_sql.Connection) -> None:
    # A context of 256 tokens leaves 64 for the items prompt: about four items per request.
    scores = make_groups(con, [23, 17, 2])
    model = RankingModel(context_window=256)
    use_backend(con, model)
    got = ranked(con)
    for g, values in scores.items():
        assert got[g] == {"ranked": sorted(values, reverse=True), "best": max(values),
                          "worst": min(values)}
    shown = [len(re.findall(r"^\d+\. ", p, re.M)) for batch in model.batches for p in batch]
    assert max(shown) < 17  # no prompt held a whole large group: it was split and merged
    # Rounds are batched: the merge steps of both large groups go out together.
    assert any(len(batch) >= 2 for batch in model.batches[1:])


def test_an_invalid_answer_inside_a_merge_makes_the_group_null(con: halo_sql.Connection) -> None:
    make_groups(con, [12, 2])
    model = RankingModel(context_window=256)
    # The first batch (each chunk ranked) is answered well; every merge step after it is not.
    model.answer = lambda s: best_first(s) if len(model.batches) == 1 else best_first(s)[:-1]
    use_backend(con, model)
    table = con.sql(f"SELECT g, llm_rerank({ARGS}) AS ranked FROM items GROUP BY g ORDER BY g")
    values = table.column("ranked").to_pylist()
    assert values[0] is None and values[1] is not None
    assert len(model.batches) == 2  # the group stops at its first invalid answer
    assert con.stats()["invalid_answers"] == 1


def test_a_single_item_is_its_own_ranking_without_a_request(con: halo_sql.Connection) -> None:
    scores = make_groups(con, [1])
    model = RankingModel()
    use_backend(con, model)
    assert ranked(con)[0] == {"ranked": scores[0], "best": scores[0][0], "worst": scores[0][0]}
    assert model.batches == []
