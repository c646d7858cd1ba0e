"""Evaluate LLM calls over columns of a batch: build prompts, one runtime call, parse answers.

Shared by the LLM operators and the DuckDB UDFs, so a value means the same wherever it is computed:
a NULL slot value gives NULL without a request (SQL's NULL-in, NULL-out), and an answer that breaks
the output type gives NULL and is counted in `invalid_answers`, never a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.llm.base import DecodingParams, LLMRequest, OutputSpec
from halo_sql.logical.llm_call import (
    InvalidAnswer,
    LLMCall,
    LLMFunction,
    parse_answer,
    to_arrow_value,
)


def evaluate_rows(
    call: LLMCall,
    arguments: Sequence[pa.Array | pa.ChunkedArray],
    runtime: LLMRuntime,
    stats: StatementStats,
    *,
    rows: int | None = None,
) -> pa.Array:
    """The call's value for every row; `arguments` are VARCHAR arrays in slot order (`rows` gives
    the row count when the template has no slots)."""
    rows = len(arguments[0]) if arguments else (rows or 0)
    columns = [a.to_pylist() for a in arguments]
    values: list[Any] = [None] * rows
    live: list[int] = []
    requests: list[LLMRequest] = []
    for row in range(rows):
        slot_values = [column[row] for column in columns]
        if any(v is None for v in slot_values):
            continue
        live.append(row)
        requests.append(call.request(slot_values))
    if not arguments:
        # A template without slots asks the same question for every row: one request.
        live = list(range(rows)) if rows else []
        requests = [call.request([])] * rows
    responses = runtime.generate(call.model, requests, stats) if requests else []
    arrow_type = call.arrow_type
    for row, response in zip(live, responses, strict=True):
        if response.error is not None:
            stats.failed_to_null(response)
            continue
        try:
            values[row] = to_arrow_value(call.parse_answer(response.text), arrow_type)
        except InvalidAnswer:
            stats.invalid_answers += 1
    return pa.array(values, type=arrow_type)


def evaluate_groups(
    call: LLMCall,
    groups: pa.Array | pa.ChunkedArray,
    runtime: LLMRuntime,
    stats: StatementStats,
    *,
    budget: int | None = None,
) -> pa.Array:
    """Aggregate LLM functions over a LIST(VARCHAR) array: one answer per group.

    LLM_AGG reduces a group hierarchically when its items do not fit the model's context: chunks
    are reduced first (all chunks of all groups in one batch), then their answers, until one
    answer per group is left. Ranking functions ask for full rankings only (a partial one is an
invalid answer: NULL and counted): a group too large for one prompt is ranked in chunks that are
merged pairwise (llm_rerank) or meet in a tournament of chunk winners (llm_first, llm_last).
    """
    lists: list[list[str] | None] = groups.to_pylist()
    backend = runtime.backend(call.model)
    fits = max(64, backend.context_window - call.params.max_tokens - 64)
    budget = fits if budget is None else max(64, min(budget, fits))  # the optimizer may chunk finer
    if call.function is LLMFunction.AGG:
        answers = _reduce(call, lists, runtime, stats, budget, backend.count_tokens)
        return pa.array(answers, type=pa.string())
    ranked = _rank(call, lists, runtime, stats, budget, backend.count_tokens)
    out: list[str | None] = []
    for items, order in zip(lists, ranked, strict=True):
        if items is None or order is None:
            out.append(None)
        elif call.function is LLMFunction.RERANK:
            out.append(json.dumps([_as_json(items[i]) for i in order]))
        else:
            out.append(items[order[0]])  # the tournament's winner (best, or worst for LAST)
    return pa.array(out, type=pa.string())


def _as_json(item: str) -> Any:
    try:
        return json.loads(item)
    except json.JSONDecodeError:
        return item


def _items_prompt(call: LLMCall, items: Sequence[str], numbered: bool) -> str:
    lines = "\n".join(f"{i + 1}. {item}" if numbered else f"- {item}" for i, item in enumerate(items))
    instruction = call.template.instruction_text().rstrip()
    if numbered:
        return (
            "Rank the items by how well they satisfy the instruction, most relevant first. "
            "Answer with a JSON array of all item numbers.\n\n"
            f"{instruction}\n\nItems:\n{lines}\nAnswer:"
        )
    return f"{instruction}\n\nItems:\n{lines}\nAnswer:"


def _chunks(items: list[str], budget: int, count_tokens: Any, call: LLMCall, numbered: bool) -> list[list[str]]:
    """Split items into consecutive chunks whose prompts fit the token budget."""
    overhead = count_tokens(_items_prompt(call, [], numbered))
    chunks: list[list[str]] = [[]]
    used = overhead
    for item in items:
        cost = count_tokens(item) + 3
        if chunks[-1] and used + cost > budget:
            chunks.append([])
            used = overhead
        chunks[-1].append(item)
        used += cost
    return chunks


def _reduce(
    call: LLMCall,
    lists: list[list[str] | None],
    runtime: LLMRuntime,
    stats: StatementStats,
    budget: int,
    count_tokens: Any,
) -> list[str | None]:
    # NULL items are skipped, as SQL aggregates skip them; a group with none left is NULL and
    # costs no request.
    current: list[list[str] | None] = [
        [i for i in g if i is not None] or None if g is not None else None for g in lists
    ]
    text = OutputSpec.text()
    params = DecodingParams(call.params.max_tokens, call.params.temperature, call.params.seed)
    for _ in range(32):  # each round shrinks every group that does not fit; 32 is far beyond need
        pending: list[tuple[int, list[str]]] = []
        for index, items in enumerate(current):
            if items is None:
                continue
            for chunk in _chunks(items, budget, count_tokens, call, numbered=False):
                pending.append((index, chunk))
        requests = [LLMRequest(_items_prompt(call, chunk, False), text, params) for _, chunk in pending]
        responses = runtime.generate(call.model, requests, stats)
        merged: dict[int, list[str]] = {}
        failed: set[int] = set()
        for (index, _), response in zip(pending, responses, strict=True):
            if response.error is not None:
                failed.add(index)  # counted in failed_requests by the runtime
                stats.failed_to_null(response)
            merged.setdefault(index, []).append(response.text.strip())
        finished = True
        for index, answers in merged.items():
            # A part of the group went unanswered: no answer for the group, not a partial one.
            current[index] = None if index in failed else answers
            if index not in failed and len(answers) > 1:
                finished = False
        if finished:
            return [None if items is None or not items else items[0] for items in current]
    raise RuntimeError("hierarchical reduce did not converge")  # pragma: no cover


def _ranking_output(size: int) -> OutputSpec:
    item = {"type": "integer", "minimum": 1, "maximum": size}
    return OutputSpec.json(
        {"type": "array", "items": item, "minItems": size, "maxItems": size, "uniqueItems": True}
    )


def _ranking(numbers: Any, size: int) -> list[int]:
    """The model's ranking of items 1..size as 0-based positions, best first. Only a full
    permutation is a ranking: a list that leaves items out, repeats one or names one that does
    not exist is an invalid answer (never padded with the items it left out).

        >>> _ranking([2, 3, 1], 3)
        [1, 2, 0]
        >>> _ranking([2, 2, 1], 3)
        Traceback (most recent call last):
        ...
        halo_sql.logical.llm_call.InvalidAnswer: expected each item number 1..3 once, got [2, 2, 1]
    """
    expected = list(range(1, size + 1))
    if (
        not isinstance(numbers, list)
        or any(type(n) is not int for n in numbers)
        or sorted(numbers) != expected
    ):
        raise InvalidAnswer(f"expected each item number 1..{size} once, got {numbers}")
    return [n - 1 for n in numbers]


class _Ranker:
    """Ranks lists of items with the model, in rounds; each round is one batched request.

    A ranking request shows a window of items (numbered) and asks for all their numbers, best
    first. A group whose items do not fit one prompt is split into chunks that are ranked
    separately and then *merged*, two sorted runs at a time (each merge step ranks the next
    block of both runs together and keeps what is settled, as a merge sort does); `llm_first`
    and `llm_last` instead run a tournament of chunk winners. A group with any invalid or
    failed answer on the way has no ranking (NULL), and each invalid answer is counted."""

    def __init__(
        self, call: LLMCall, runtime: LLMRuntime, stats: StatementStats, budget: int,
        count_tokens: Any,
    ) -> None:
        self.call, self.runtime, self.stats = call, runtime, stats
        self.budget, self.count_tokens = budget, count_tokens
        self.overhead = count_tokens(_items_prompt(call, [], True))

    def cost(self, item: str) -> int:
        return int(self.count_tokens(item)) + 4  # the item, its number and line break

    def chunks(self, items: list[str], ids: list[int]) -> list[list[int]]:
        """Consecutive chunks of `ids` whose prompts fit the budget, at least two items each (a
        chunk of one would decide nothing; one too long for the context fails its request)."""
        out: list[list[int]] = [[]]
        used = self.overhead
        for i in ids:
            cost = self.cost(items[i])
            if len(out[-1]) >= 2 and used + cost > self.budget:
                out.append([])
                used = self.overhead
            out[-1].append(i)
            used += cost
        if len(out) > 1 and len(out[-1]) == 1:
            out[-2].extend(out.pop())
        return out

    def rank(self, jobs: list[tuple[list[str], list[int]]]) -> list[list[int] | None]:
        """One batched request per job (the items of `ids`); each job's ids best first, or None
        where the answer was not a full ranking (counted) or the request failed."""
        requests = [
            LLMRequest(
                _items_prompt(self.call, [items[i] for i in ids], True),
                _ranking_output(len(ids)),
                self.call.params,
            )
            for items, ids in jobs
        ]
        responses = self.runtime.generate(self.call.model, requests, self.stats) if requests else []
        out: list[list[int] | None] = []
        for (_, ids), response in zip(jobs, responses, strict=True):
            if response.error is not None:
                out.append(None)  # counted in failed_requests by the runtime
                continue
            try:
                order = _ranking(parse_answer(_ranking_output(len(ids)), response.text), len(ids))
            except InvalidAnswer:
                self.stats.invalid_answers += 1
                out.append(None)
                continue
            out.append([ids[p] for p in order])
        return out

    def tournament(self, groups: list[list[str]], last: bool) -> list[int | None]:
        """The best (or, `last`, the worst) item of each group: chunks are ranked, their winners
        meet in the next round, until one chunk decides."""
        pick = -1 if last else 0
        alive: dict[int, list[int]] = {g: list(range(len(items))) for g, items in enumerate(groups)}
        winner: list[int | None] = [None] * len(groups)
        for g, ids in list(alive.items()):
            if len(ids) == 1:  # one item is its own best and worst: nothing to ask
                winner[g] = ids[0]
                del alive[g]
        while alive:
            jobs: list[tuple[int, list[int]]] = [
                (g, chunk) for g, ids in alive.items() for chunk in self.chunks(groups[g], ids)
            ]
            orders = self.rank([(groups[g], chunk) for g, chunk in jobs])
            survivors: dict[int, list[int]] = {}
            failed: set[int] = set()
            for (g, _), order in zip(jobs, orders, strict=True):
                if order is None:
                    failed.add(g)
                else:
                    survivors.setdefault(g, []).append(order[pick])
            for g in list(alive):
                if g in failed:
                    del alive[g]  # no ranking, no winner: NULL
                elif len(survivors[g]) == 1:
                    winner[g] = survivors[g][0]
                    del alive[g]
                else:
                    alive[g] = survivors[g]
        return winner

    def sort(self, groups: list[list[str]]) -> list[list[int] | None]:
        """Each group's full ranking: chunks ranked in one batch, then merged pairwise."""
        result: list[list[int] | None] = [None] * len(groups)
        runs: dict[int, list[list[int]]] = {}
        firsts: list[tuple[int, list[int]]] = []
        for g, items in enumerate(groups):
            if len(items) == 1:
                result[g] = [0]
            elif items:
                firsts += [(g, chunk) for chunk in self.chunks(items, list(range(len(items))))]
        failed: set[int] = set()
        for (g, _), order in zip(firsts, self.rank([(groups[g], c) for g, c in firsts]), strict=True):
            if order is None:
                failed.add(g)
            else:
                runs.setdefault(g, []).append(order)
        merges: dict[int, list[_Merge]] = {}
        while True:
            for g in list(runs):
                if g in failed:
                    del runs[g]
                    merges.pop(g, None)
                    continue
                while len(runs[g]) >= 2:  # start merging whatever pairs are ready
                    merges.setdefault(g, []).append(_Merge(runs[g].pop(0), runs[g].pop(0)))
                if not merges.get(g) and len(runs[g]) == 1:
                    result[g] = runs.pop(g)[0]
            steps = [(g, m, m.window(self, groups[g])) for g, ms in merges.items() for m in ms]
            if not steps:
                return result
            orders = self.rank([(groups[g], window) for g, _, window in steps])
            for (g, merge, _), order in zip(steps, orders, strict=True):
                if order is None:
                    failed.add(g)
                elif merge.advance(order):
                    merges[g].remove(merge)
                    runs[g].append(merge.out)


class _Merge:
    """Merging two ranked runs with the model: each step shows blocks from the heads of both
    runs, and emits the window's ranking up to the first item after which an item not yet shown
    could rank (the last shown item of a run that has more)."""

    def __init__(self, left: list[int], right: list[int]) -> None:
        self.sides = [left, right]
        self.out: list[int] = []
        self.blocks: list[list[int]] = [[], []]

    def window(self, ranker: _Ranker, items: list[str]) -> list[int]:
        # Alternate between the runs' heads while the prompt fits: at least one item of each.
        self.blocks = [[], []]
        used = ranker.overhead
        positions = [0, 0]
        turn = 0
        while any(positions[s] < len(self.sides[s]) for s in (0, 1)):
            side = turn % 2
            turn += 1
            if positions[side] >= len(self.sides[side]):
                continue
            item = self.sides[side][positions[side]]
            cost = ranker.cost(items[item])
            if all(self.blocks) and used + cost > ranker.budget:
                break
            self.blocks[side].append(item)
            positions[side] += 1
            used += cost
        return self.blocks[0] + self.blocks[1]

    def advance(self, order: list[int]) -> bool:
        """Take the settled prefix of the window's ranking; True when the merge is done."""
        stops = {
            block[-1] for side, block in zip(self.sides, self.blocks, strict=True)
            if len(side) > len(block)
        }
        taken: list[int] = []
        for item in order:
            taken.append(item)
            if item in stops:
                break
        self.out += taken
        gone = set(taken)
        self.sides = [[i for i in side if i not in gone] for side in self.sides]
        if not self.sides[0] or not self.sides[1]:
            self.out += self.sides[0] + self.sides[1]  # one run left: already in order
            return True
        return False


def _rank(
    call: LLMCall,
    lists: list[list[str] | None],
    runtime: LLMRuntime,
    stats: StatementStats,
    budget: int,
    count_tokens: Any,
) -> list[list[int] | None]:
    """Per group, the positions of its items best first (NULL items are left out, as SQL
    aggregates skip NULLs); None for a group without items or without a valid ranking. For
    llm_first/llm_last only the first/last position is meaningful."""
    kept: list[list[int]] = [
        [i for i, item in enumerate(g) if item is not None] if g is not None else [] for g in lists
    ]
    groups = [[lists[g][i] for i in ids] for g, ids in enumerate(kept)]  # type: ignore[index]
    ranker = _Ranker(call, runtime, stats, budget, count_tokens)
    if call.function is LLMFunction.RERANK:
        orders = ranker.sort(groups)
    else:
        winners = ranker.tournament(groups, last=call.function is LLMFunction.LAST)
        orders = [None if w is None else [w] for w in winners]
    return [
        None if order is None or not kept[g] else [kept[g][i] for i in order]
        for g, order in enumerate(orders)
    ]
