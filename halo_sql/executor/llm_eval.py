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
    answer per group is left. Ranking functions rank chunks and merge the chunk orders.
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
            pick = order[0] if call.function is LLMFunction.FIRST else order[-1]
            out.append(items[pick])
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
    return OutputSpec.json({"type": "array", "items": item, "minItems": 1, "maxItems": size})


def _ranking(numbers: list[int], size: int) -> list[int]:
    """A full ranking of items 1..size from a model's list: valid numbers in the order given
    (repeats dropped), then the items it left out in their input order. A list with no valid
    item number is not a ranking."""
    order: list[int] = []
    for number in numbers:
        if isinstance(number, int) and 1 <= number <= size and number not in order:
            order.append(number)
    if not order:
        raise InvalidAnswer(f"no item number between 1 and {size} in {numbers}")
    return order + [n for n in range(1, size + 1) if n not in order]


def _rank(
    call: LLMCall,
    lists: list[list[str] | None],
    runtime: LLMRuntime,
    stats: StatementStats,
    budget: int,
    count_tokens: Any,
) -> list[list[int] | None]:
    pending: list[tuple[int, int, list[str]]] = []
    for index, items in enumerate(lists):
        if not items:
            continue
        offset = 0
        for chunk in _chunks(items, budget, count_tokens, call, numbered=True):
            pending.append((index, offset, chunk))
            offset += len(chunk)
    requests = [
        LLMRequest(_items_prompt(call, chunk, True), _ranking_output(len(chunk)), call.params)
        for _, _, chunk in pending
    ]
    responses = runtime.generate(call.model, requests, stats)
    orders: dict[int, list[int]] = {}
    failed: set[int] = set()
    for (index, offset, chunk), response in zip(pending, responses, strict=True):
        try:
            ranks = _ranking(parse_answer(_ranking_output(len(chunk)), response.text), len(chunk))
        except InvalidAnswer:
            stats.invalid_answers += 1
            failed.add(index)
            continue
        # Chunks are ranked independently and concatenated in their input order.
        orders.setdefault(index, []).extend(offset + r - 1 for r in ranks)
    return [None if i in failed or i not in orders else orders[i] for i in range(len(lists))]
