"""The sim backend: deterministic, constraint-respecting answers with real token accounting; its
block prefix cache; and the runtime that deduplicates and orders requests for any backend."""

from __future__ import annotations

import json
from collections.abc import Sequence

import jsonschema
import pytest

from halo_sql.errors import ModelError, QueryCancelled
from halo_sql.executor.runtime import LLMRuntime, StatementStats
from halo_sql.llm.base import (
    Backend,
    DecodingParams,
    LLMRequest,
    LLMResponse,
    OutputKind,
    OutputSpec,
)
from halo_sql.llm.prefix_cache import PrefixCache, prefix_trie_size
from halo_sql.llm.registry import ModelSpec, backend_for
from halo_sql.llm.sim import SimBackend
from halo_sql.llm.tokenizer import RegexTokenizer, load_tokenizer

# -- answers ------------------------------------------------------------------------------------


def test_sim_speaks_the_backend_protocol() -> None:
    assert isinstance(SimBackend(), Backend)
    assert SimBackend().name == "sim"
    assert SimBackend(context_window=512).context_window == 512


def test_the_same_request_always_gets_the_same_answer() -> None:
    request = LLMRequest("Summarize: the parcel came late.")
    first = SimBackend().generate([request])[0]
    again = SimBackend().generate([request, request])
    assert [r.text for r in again] == [first.text, first.text]


def test_answers_depend_on_prompt_params_and_seed() -> None:
    base = LLMRequest("Summarize: the parcel came late.")
    texts = {
        SimBackend().generate([base])[0].text,
        SimBackend().generate([LLMRequest("Summarize: the parcel came early.")])[0].text,
        SimBackend().generate([LLMRequest(base.prompt, params=DecodingParams(temperature=0.7))])[0].text,
        SimBackend(seed=1).generate([base])[0].text,
    }
    assert len(texts) == 4


def test_yes_no_and_choice_answers_are_always_valid_and_vary() -> None:
    backend = SimBackend()
    booleans = backend.generate([LLMRequest(f"Late? {i}", OutputSpec.boolean()) for i in range(40)])
    assert {r.text for r in booleans} == {"yes", "no"}
    labels = ("delivery", "quality", "price")
    choices = backend.generate([LLMRequest(f"Topic {i}", OutputSpec.choice(labels)) for i in range(40)])
    assert {r.text for r in choices} == set(labels)


def test_json_answers_satisfy_their_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 3, "maximum": 5},
            "x": {"type": "number"},
            "ok": {"type": "boolean"},
            "mood": {"enum": ["calm", "angry"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
            "maybe": {"type": ["null", "string"]},
            "fixed": {"const": 7},
        },
    }
    for response in SimBackend().generate(
        [LLMRequest(f"Facts {i}", OutputSpec.json(schema)) for i in range(20)]
    ):
        jsonschema.validate(json.loads(response.text), schema)


def test_free_text_stops_at_max_tokens() -> None:
    backend = SimBackend()
    for limit in (1, 2, 5):
        response = backend.generate(
            [LLMRequest("Summarize: a long story", params=DecodingParams(max_tokens=limit))]
        )[0]
        assert backend.count_tokens(response.text) <= limit
        assert response.output_tokens <= limit
        if limit < 3:  # sim answers have at least three words
            assert response.finish_reason == "length"
    full = backend.generate([LLMRequest("Summarize: a long story")])[0]
    assert full.finish_reason == "stop" and full.output_tokens == backend.count_tokens(full.text)


def test_prompts_longer_than_the_context_window_fail_per_request() -> None:
    backend = SimBackend(context_window=8)
    short, long = backend.generate([LLMRequest("a b c"), LLMRequest("a b c d e f g h i j")])
    assert short.error is None and short.text
    assert long.text == "" and long.finish_reason == "error"
    assert long.error == "prompt of 10 tokens exceeds the context window of 8"


def test_one_generate_call_is_one_batch() -> None:
    backend = SimBackend()
    backend.generate([LLMRequest(str(i)) for i in range(10)])
    assert backend.calls == 1


# -- token accounting ---------------------------------------------------------------------------


def test_regex_tokenizer_splits_like_gpt2_pretokenization() -> None:
    assert RegexTokenizer().encode("Is the customer angry?") == ["Is", " the", " customer", " angry", "?"]
    assert RegexTokenizer().encode("it's 12345") == ["it", "'s", " 123", "45"]
    assert isinstance(load_tokenizer(None), RegexTokenizer)


def test_prompt_tokens_count_the_whole_prompt() -> None:
    response = SimBackend().generate([LLMRequest("Is the customer angry?")])[0]
    assert response.prompt_tokens == 5


def test_shared_prefixes_are_cached_in_whole_blocks() -> None:
    backend = SimBackend(block_size=4)
    shared = "one two three four five six seven eight"
    first, second, third = backend.generate(
        [LLMRequest(shared + " nine"), LLMRequest(shared + " ten"), LLMRequest("zero " + shared)]
    )
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens == 8  # two whole blocks; the last token is always computed
    assert third.cached_prompt_tokens == 0  # a prefix cache only helps from the first token
    again = backend.generate([LLMRequest(shared + " nine")])[0]
    assert again.cached_prompt_tokens == again.prompt_tokens - 1
    backend.reset_cache()
    assert backend.generate([LLMRequest(shared + " nine")])[0].cached_prompt_tokens == 0


def test_backends_are_shared_by_equal_specs() -> None:
    one = backend_for(ModelSpec("a", "sim", options={"block_size": 8}))
    assert backend_for(ModelSpec("b", "sim", options={"block_size": 8})) is one
    assert backend_for(ModelSpec("a", "sim", options={"block_size": 16})) is not one


# -- the prefix cache on its own ------------------------------------------------------------------


def test_prefix_cache_counts_only_whole_leading_blocks() -> None:
    cache = PrefixCache(block_size=2, capacity_blocks=100)
    assert cache.lookup_and_insert(list("abcde")) == 0
    assert cache.lookup(list("abcdx")) == 4
    assert cache.lookup(list("abxd")) == 2
    assert cache.lookup(list("xbcd")) == 0
    assert len(cache) == 2  # [a b] [c d]; the lone "e" is not a whole block


def test_prefix_cache_evicts_least_recently_used_leaves() -> None:
    cache = PrefixCache(block_size=1, capacity_blocks=3)
    cache.lookup_and_insert(["a", "b"])
    cache.lookup_and_insert(["c"])
    cache.lookup_and_insert(["a", "b"])  # touch a-b: c is now the oldest
    cache.lookup_and_insert(["d"])
    assert len(cache) == 3
    assert cache.lookup(["c"]) == 0
    assert cache.lookup(["a", "b"]) == 2 and cache.lookup(["d"]) == 1


def test_prefix_cache_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError):
        PrefixCache(block_size=0)


def test_prefix_trie_size_is_the_fewest_tokens_any_order_computes() -> None:
    assert prefix_trie_size([["a", "b", "c"], ["a", "b", "d"], ["x"]]) == 5
    assert prefix_trie_size([]) == 0


# -- the runtime: one place that deduplicates, orders and accounts --------------------------------


class Recorder:
    """A backend that records what it was sent and answers with the prompt reversed."""

    name = "recorder"
    context_window = 4096

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        if self.fail:
            raise RuntimeError("GPU on fire")
        self.batches.append([r.prompt for r in requests])
        return [LLMResponse(r.prompt[::-1], len(r.prompt), 0, 1) for r in requests]

    def count_tokens(self, text: str) -> int:
        return len(text)

    def close(self) -> None:
        pass


def test_runtime_sends_each_distinct_request_once_per_statement() -> None:
    backend = Recorder()
    runtime = LLMRuntime(lambda model: backend)
    stats = StatementStats()
    answers = runtime.generate("m", [LLMRequest("b"), LLMRequest("a"), LLMRequest("b")], stats)
    assert [a.text for a in answers] == ["b", "a", "b"]
    runtime.generate("m", [LLMRequest("a"), LLMRequest("c")], stats)
    assert backend.batches == [["a", "b"], ["c"]]  # in prompt order: shared prefixes adjacent
    assert (stats.llm_requests, stats.deduplicated_requests, stats.backend_calls) == (3, 2, 2)
    assert stats.prompt_tokens == 3 and stats.output_tokens == 3


def test_runtime_keeps_requests_with_different_constraints_apart() -> None:
    backend = Recorder()
    stats = StatementStats()
    LLMRuntime(lambda model: backend).generate(
        "m", [LLMRequest("a"), LLMRequest("a", OutputSpec.boolean()),
              LLMRequest("a", params=DecodingParams(max_tokens=3))], stats
    )
    assert stats.llm_requests == 3 and stats.deduplicated_requests == 0


def test_a_runtime_limited_to_one_request_in_flight_sends_them_one_by_one() -> None:
    backend = Recorder()
    stats = StatementStats()
    LLMRuntime(lambda model: backend, max_concurrency=1).generate(
        "m", [LLMRequest(f"{i:02}") for i in range(4)], stats
    )
    assert [len(b) for b in backend.batches] == [1, 1, 1, 1]
    assert stats.llm_requests == stats.backend_calls == 4


def test_backend_failures_name_the_model() -> None:
    runtime = LLMRuntime(lambda model: Recorder(fail=True))
    with pytest.raises(ModelError, match=r"model 'tiny' \(recorder\) failed: GPU on fire"):
        runtime.generate("tiny", [LLMRequest("a")], StatementStats())


def test_cancelled_statements_send_nothing() -> None:
    backend = Recorder()
    stats = StatementStats()
    stats.cancel.set()
    with pytest.raises(QueryCancelled):
        LLMRuntime(lambda model: backend).generate("m", [LLMRequest("a")], stats)
    assert backend.batches == []


def test_output_kinds_cover_the_sql_functions() -> None:
    assert {k.value for k in OutputKind} == {"text", "boolean", "choice", "json"}
