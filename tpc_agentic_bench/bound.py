"""The lower bound that belongs to a workload, not to any system that runs it.

The workload's logical workflow (its plain program, `programs.py`) runs once, untimed, through a
request memo (`clients.Memo`): every distinct request it needs is sent once, LIMIT over an LLM
filter asks one row at a time and stops at the limit. Its distinct requests, as the token ids
their engine computes (chat template included), give

- `tokens`: the nodes of their token trie (per engine, summed): no order and no cache can compute
  fewer prompt tokens;
- `block_tokens`: the same at the KV cache's granularity (`block_size` tokens): each distinct
  whole block of a prompt (identified by everything before it) once, plus each prompt's partial
  last block, which no block cache can reuse;
- `output_tokens`: what the model generated for them: no system decodes fewer without skipping
  a request the workload needs.

    >>> prefix_trie_blocks([["a", "b", "c"], ["a", "b", "d"]], block_size=2)
    4
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from halo_sql.llm.prefix_cache import prefix_trie_size
from halo_sql.llm.tokenizer import load_tokenizer
from tpc_agentic_bench.clients import EngineKey, Memo, Router, by_engine
from tpc_agentic_bench.programs import ProgramOutcome, run_batch
from tpc_agentic_bench.workloads import Workload

BLOCK_SIZE = 32
"""KV-cache block of the engines the benchmark runs (halo's VLLMBackend and the sim default)."""


def prefix_trie_blocks(token_lists: Sequence[Sequence[Hashable]], block_size: int = BLOCK_SIZE) -> int:
    """Prompt tokens a block-granular prefix cache computes at the least for these prompts: each
    distinct whole block once, keyed by its prefix, plus every distinct prompt's partial block."""
    root: dict[Any, dict] = {}
    total = 0
    for tokens in {tuple(t) for t in token_lists}:
        node = root
        full = len(tokens) - len(tokens) % block_size
        for start in range(0, full, block_size):
            block = tokens[start : start + block_size]
            child = node.get(block)
            if child is None:
                child = node[block] = {}
                total += block_size
            node = child
        total += len(tokens) - full
    return total


class PromptTokens:
    """Prompts as the token ids their engine computes (memoized): the sim's tokenizer for the
    sim, the model's tokenizer with special tokens and its chat template (when used) for vLLM."""

    def __init__(self) -> None:
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self._ids: dict[tuple[EngineKey, str], list[Hashable]] = {}

    def ids(self, engine: EngineKey, prompt: str) -> list[Hashable]:
        key = (engine, prompt)
        known = self._ids.get(key)
        if known is None:
            known = self._ids[key] = self._encode(engine, prompt)
        return known

    def _encode(self, engine: EngineKey, prompt: str) -> list[Hashable]:
        tokenizer = self._tokenizers.get((engine.kind, engine.model))
        if tokenizer is None:
            if engine.kind == "vllm" and engine.model is not None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(engine.model)
            else:
                tokenizer = load_tokenizer(engine.model)
            self._tokenizers[(engine.kind, engine.model)] = tokenizer
        if engine.kind == "vllm":
            from halo_sql.llm.vllm_backend import prompt_token_ids

            return list(prompt_token_ids(tokenizer, prompt, chat_template=engine.chat_template))
        return list(tokenizer.encode(prompt))

    def trie(self, engine: EngineKey, prompts: Sequence[str]) -> int:
        return prefix_trie_size([self.ids(engine, p) for p in prompts])


@dataclass(frozen=True)
class WorkloadBound:
    """The least work a workload needs (see the module docstring), summed over its engines."""

    requests: int
    tokens: int
    block_tokens: int
    output_tokens: int
    failed_requests: int = 0
    """Distinct requests the engine could not answer in the logical run (their output is 0)."""

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.tokens,
            "prompt_tokens_blocks": self.block_tokens,
            "output_tokens": self.output_tokens,
            "failed_requests": self.failed_requests,
        }


def bound_of(memo: Memo, tokens: PromptTokens, block_size: int = BLOCK_SIZE) -> WorkloadBound:
    """The bound of the distinct requests a logical run recorded."""
    trie = blocks = output = failed = 0
    for items in by_engine(memo.distinct):
        ids = [tokens.ids(items[0].engine, item.prompt) for item in items]
        trie += prefix_trie_size(ids)
        blocks += prefix_trie_blocks(ids, block_size)
        output += sum(item.answer.output_tokens for item in items)
        failed += sum(item.answer.text is None for item in items)
    return WorkloadBound(len(memo.distinct), trie, blocks, output, failed)


async def logical_run(
    workload: Workload, router: Router, database: duckdb.DuckDBPyConnection
) -> tuple[Memo, list[ProgramOutcome]]:
    """Run the workload's plain program once through a request memo (fewest requests); the memo
    holds the distinct requests, the outcomes say whether every query completed."""
    memo = Memo(router)
    outcomes = await run_batch(workload, memo, database, eager=False)
    return memo, outcomes
