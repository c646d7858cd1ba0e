"""Adapters of the programs' `Ask` interface (`programs.py`) to the engines that answer them.

    AsyncLLMClient     vLLM's `AsyncLLM` in this process: one engine request per ask, awaited
                       (halo's own engine when its backend exposes `async_engine`, else one
                       started with the same arguments: `start_async_llm`)
    OpenAIClient       an OpenAI-compatible server (vLLM's api_server, or `servers.SimOpenAIServer`)
                       through langchain-openai's ChatOpenAI, or the openai client's completions
                       endpoint for a model without a chat template
    BackendClient      a halo Backend (the sim): `generate([request])` in a worker thread
    CoalescingClient   a halo Backend, with the requests pending at the same moment sent as one
                       `generate` call (the untimed bound run on an engine without async access)
    Router             model name -> client (W4 runs two models), recording what each engine got
    Memo               sends each distinct request once, in flight too, and records it (the
                       workload's logical run, `bound.py`)

Every client knows its `engine` (`EngineKey`): which model files and which tokenization the
engine applies, so that prompts can be turned into the token ids the engine really computes.

    >>> from halo_sql.llm.sim import SimBackend
    >>> import asyncio
    >>> client = BackendClient(SimBackend())
    >>> asyncio.run(client("default", "Late? yes or no", OutputSpec.boolean(), 2)).text
    'yes'
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halo_sql.llm.base import (
    Backend,
    DecodingParams,
    LLMRequest,
    LLMResponse,
    OutputKind,
    OutputSpec,
)
from tpc_agentic_bench.programs import Answer


@dataclass(frozen=True)
class EngineKey:
    """What turns a prompt into the token ids an engine computes: the engine kind ("sim" or
    "vllm"), the model directory and whether prompts are wrapped in its chat template."""

    kind: str
    model: str | None
    chat_template: bool = False


def engine_key(backend: Backend) -> EngineKey:
    """The EngineKey of a halo backend (a recording proxy is looked through)."""
    inner = getattr(backend, "inner", backend)
    kind = "vllm" if type(inner).__name__ == "VLLMBackend" else "sim"
    return EngineKey(kind, getattr(inner, "model", None), bool(getattr(inner, "chat_template", False)))


def _answer(response: LLMResponse) -> Answer:
    if response.error is not None:
        return Answer(None, response.prompt_tokens, response.cached_prompt_tokens,
                      response.output_tokens, response.error)
    return Answer(response.text, response.prompt_tokens, response.cached_prompt_tokens,
                  response.output_tokens)


def _request(prompt: str, output: OutputSpec, max_tokens: int) -> LLMRequest:
    return LLMRequest(prompt, output, DecodingParams(max_tokens=max_tokens))


class BackendClient:
    """A halo Backend answering one request per `generate` call, in a worker thread."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.engine = engine_key(backend)

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        responses = await asyncio.to_thread(
            self.backend.generate, [_request(prompt, output, max_tokens)]
        )
        return _answer(responses[0])

    def counters(self) -> dict[str, int] | None:
        return backend_counters(self.backend)


def backend_counters(backend: Backend) -> dict[str, int] | None:
    """Cumulative engine steps and running-sequence sums of a halo backend whose driver counts
    them (`engine_counters()`), else None."""
    read = getattr(getattr(backend, "inner", backend), "engine_counters", None)
    return as_counts(read()) if callable(read) else None


def as_counts(counters: Any) -> dict[str, int]:
    """Engine counters as a plain dict (halo's drivers return an EngineCounters)."""
    if isinstance(counters, dict):
        return dict(counters)
    return {"steps": int(counters.steps), "running_sum": int(counters.running_sum)}


class CoalescingClient:
    """A halo Backend fed in batches: every request pending when the event loop comes round is
    sent in one `generate` call (a synchronous engine then still sees whole steps of work)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.engine = engine_key(backend)
        self.calls = 0
        self._pending: list[tuple[LLMRequest, asyncio.Future[Answer]]] = []
        self._draining = False

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending.append((_request(prompt, output, max_tokens), future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # let every runnable task add its request first
                batch, self._pending = self._pending, []
                self.calls += 1
                try:
                    responses = await asyncio.to_thread(self.backend.generate, [r for r, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                    continue
                for (_, future), response in zip(batch, responses, strict=True):
                    future.set_result(_answer(response))
        finally:
            self._draining = False


def label_budget(max_tokens: int, output: OutputSpec, encode: Any) -> int:
    """The token budget of a request, raised for labels so that the longest one fits with its end
    token (the rule of halo's vLLM backend, so both send the same max_tokens)."""
    if output.kind not in (OutputKind.BOOLEAN, OutputKind.CHOICE) or encode is None:
        return max_tokens
    longest = max((len(encode(label)) for label in output.labels), default=0)
    return max(max_tokens, longest + 1)


# -- vLLM AsyncLLM -------------------------------------------------------------------------------


class StepCounter:
    """Engine steps and the sum over steps of the sequences running in them (cumulative), fed
    by a vLLM stat logger: average sequences per step = running_sum / steps."""

    def __init__(self) -> None:
        self.steps = 0
        self.running_sum = 0
        self._lock = threading.Lock()

    def record(self, running: int) -> None:
        with self._lock:
            self.steps += 1
            self.running_sum += running

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"steps": self.steps, "running_sum": self.running_sum}

    def logger_factory(self) -> Any:
        """A vLLM v1 per-engine stat logger factory whose `record` feeds this counter (the
        scheduler reports its running requests once per engine step)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        counter = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    counter.record(int(scheduler_stats.num_running_reqs))

            def log_engine_initialized(self) -> None:
                pass

        return _Logger


def vllm_engine_kwargs(model: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The engine arguments halo's VLLMBackend would start `model` with under `options` (its own
    defaults filled in, through `vllm_compat.engine_kwargs`), and its chat-template flag."""
    from halo_sql.llm import vllm_compat as compat
    from halo_sql.llm.vllm_backend import VLLMBackend

    bound = inspect.signature(VLLMBackend.__init__).bind(None, model, **options)
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop("self")
    args.pop("model")
    chat = bool(args.pop("chat_template", False))
    extra = dict(args.pop("engine_kwargs", {}) or {})
    return compat.engine_kwargs(model, extra=extra, **args), chat


def start_async_llm(model: str, options: Mapping[str, Any]) -> tuple[Any, StepCounter, bool]:
    """A vLLM `AsyncLLM` with the engine arguments halo's backend uses for (model, options), a
    StepCounter on its scheduler, and the chat-template flag. Call from the event loop that will
    use it (AsyncLLM binds its output handler to that loop). Close with `engine.shutdown()`."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs, chat = vllm_engine_kwargs(model, options)
    structured = kwargs.get("structured_outputs_config")
    if isinstance(structured, dict):
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**structured)
    counter = StepCounter()
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(**kwargs, disable_log_stats=True), stat_loggers=[counter.logger_factory()]
    )
    return engine, counter, chat


class AsyncLLMClient:
    """One `AsyncLLM.generate` request per ask: token ids as halo's backend builds them (chat
    template when the model has one), the same structured-output constraint and token budget,
    final output only."""

    _ids = itertools.count()

    def __init__(self, engine: Any, model: str, *, chat_template: bool,
                 counters: Callable[[], dict[str, int]] | None = None) -> None:
        self.async_engine = engine
        self.engine = EngineKey("vllm", model, chat_template)
        self._counters = counters
        """Cumulative engine steps and running-sequence sums (a StepCounter's, or halo's
        driver's `engine_counters`); None when the engine does not count them."""
        self._tokenizer = engine.get_tokenizer()

    def _encode_label(self, label: str) -> list[int]:
        return list(self._tokenizer.encode(label, add_special_tokens=False))

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        from vllm.sampling_params import RequestOutputKind

        from halo_sql.llm import vllm_compat as compat
        from halo_sql.llm.vllm_backend import prompt_token_ids

        ids = prompt_token_ids(self._tokenizer, prompt, chat_template=self.engine.chat_template)
        params = compat.sampling_params(
            _request(prompt, output, max_tokens),
            max_tokens=label_budget(max_tokens, output, self._encode_label),
        )
        params.output_kind = RequestOutputKind.FINAL_ONLY  # no per-token outputs to process
        final = None
        try:
            async for out in self.async_engine.generate(
                compat.tokens_prompt(ids, prompt), params, f"bench-{next(self._ids)}"
            ):
                final = out
        except compat.request_error_types() as exc:
            return Answer(None, len(ids), 0, 0, str(exc))
        if final is None:
            return Answer(None, len(ids), 0, 0, "the engine returned no output")
        stats = compat.read_output(final)
        return Answer(stats.text, stats.prompt_tokens, stats.cached_prompt_tokens, stats.output_tokens)

    def counters(self) -> dict[str, int] | None:
        return None if self._counters is None else as_counts(self._counters())


# -- OpenAI-compatible servers -------------------------------------------------------------------


def structured_outputs(output: OutputSpec) -> dict[str, Any] | None:
    """vLLM's `structured_outputs` request field for an output constraint (None: free text).

    >>> structured_outputs(OutputSpec.choice(["a", "b"]))
    {'choice': ['a', 'b']}
    """
    if output.kind in (OutputKind.BOOLEAN, OutputKind.CHOICE):
        return {"choice": list(output.labels)}
    if output.kind is OutputKind.JSON:
        return {"json": output.schema}
    return None


class OpenAIClient:
    """An OpenAI-compatible server at `base_url` serving `served_model`.

    With a chat template the prompt goes as one user message through langchain-openai's
    ChatOpenAI (what a LangGraph program uses); without one through the openai client's
    completions endpoint (langchain's completion class drops the cached-token count). Constraints
    go in the `structured_outputs` request field; token counts come from `usage`, the cached
    ones from `prompt_tokens_details` (None, "unknown", when the server does not report them).
    """

    def __init__(self, base_url: str, served_model: str, engine: EngineKey, *,
                 encode_label: Any = None, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        self.engine = engine
        self._encode_label = encode_label
        self._timeout = timeout
        self._chat: Any = None
        self._completions: Any = None
        self._http: Any = None
        self._loop: Any = None

    def _clients(self) -> tuple[Any, Any]:
        # HTTP connections belong to the event loop that opened them: new clients per loop
        # (langchain-openai would otherwise reuse its process-wide cached one).
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return self._chat, self._completions
        import openai

        self._loop = loop
        http = self._http = openai.DefaultAsyncHttpxClient()  # up to 1,000 connections
        self._chat = self._completions = None
        if self.engine.chat_template:
            from langchain_openai import ChatOpenAI

            self._chat = ChatOpenAI(
                model=self.served_model, base_url=self.base_url + "/v1", api_key="EMPTY",
                temperature=0, max_retries=0, timeout=self._timeout, http_async_client=http,
            )
        else:
            self._completions = openai.AsyncOpenAI(
                base_url=self.base_url + "/v1", api_key="EMPTY", max_retries=0,
                timeout=self._timeout, http_client=http,
            )
        return self._chat, self._completions

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop's clients."""
        http, self._http, self._loop = self._http, None, None
        if http is not None:
            await http.aclose()

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        import openai

        chat, completions = self._clients()
        budget = label_budget(max_tokens, output, self._encode_label)
        extra = {}
        constraint = structured_outputs(output)
        if constraint is not None:
            extra["structured_outputs"] = constraint
        try:
            if chat is not None:
                message = await chat.ainvoke(prompt, max_tokens=budget, extra_body=extra or None)
                usage = message.response_metadata.get("token_usage") or {}
                return _usage_answer(str(message.content), usage)
            response = await completions.completions.create(
                model=self.served_model, prompt=prompt, max_tokens=budget, temperature=0,
                extra_body=extra or None,
            )
            return _usage_answer(response.choices[0].text, response.usage.model_dump())
        except openai.BadRequestError as exc:  # this request only (e.g. a prompt too long)
            return Answer(None, 0, 0, 0, str(exc))


def _usage_answer(text: str, usage: Mapping[str, Any]) -> Answer:
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Answer(text, int(usage.get("prompt_tokens") or 0),
                  None if cached is None else int(cached), int(usage.get("completion_tokens") or 0))


# -- routing and the logical run -----------------------------------------------------------------


class Router:
    """Sends each ask to the client of its model and records the prompts each engine received
    (for the per-system prefix trie)."""

    def __init__(self, clients: Mapping[str, Any]) -> None:
        self.clients = dict(clients)
        self.prompts: dict[int, tuple[Any, list[str]]] = {}

    def client(self, model: str) -> Any:
        try:
            return self.clients[model]
        except KeyError:
            raise KeyError(f"no engine for model {model!r} (have {sorted(self.clients)})") from None

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        client = self.client(model)
        self.prompts.setdefault(id(client), (client, []))[1].append(prompt)
        return await client(model, prompt, output, max_tokens)

    def distinct_prompts(self) -> list[tuple[EngineKey, list[str]]]:
        return [(c.engine, sorted(set(p))) for c, p in self.prompts.values()]

    @property
    def engines(self) -> list[Any]:
        """The distinct clients (engines) behind the model names."""
        unique: dict[int, Any] = {}
        for client in self.clients.values():
            unique.setdefault(id(client), client)
        return list(unique.values())


@dataclass(frozen=True)
class Distinct:
    """One distinct request of the logical run: where it went, what it was, what it cost."""

    engine: EngineKey
    engine_id: int
    """Which engine instance (two engines can share an EngineKey, never a cache)."""
    prompt: str
    answer: Answer


class Memo:
    """An Ask over a Router that sends each distinct request (model, prompt, constraint, budget)
    once, also while it is in flight, and records the distinct requests."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.distinct: list[Distinct] = []
        self._known: dict[tuple[int, str, OutputSpec, int], asyncio.Future[Answer]] = {}

    async def __call__(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        # Keyed by engine, not model name: W4's "small" is the default model's engine.
        key = (id(self.router.client(model)), prompt, output, max_tokens)
        future = self._known.get(key)
        if future is None:
            future = self._known[key] = asyncio.ensure_future(
                self._first(model, prompt, output, max_tokens)
            )
        return await asyncio.shield(future)

    async def _first(self, model: str, prompt: str, output: OutputSpec, max_tokens: int) -> Answer:
        answer = await self.router(model, prompt, output, max_tokens)
        client = self.router.client(model)
        self.distinct.append(Distinct(client.engine, id(client), prompt, answer))
        return answer


def by_engine(items: Sequence[Distinct]) -> list[list[Distinct]]:
    """The distinct requests grouped per engine instance."""
    out: dict[int, list[Distinct]] = {}
    for item in items:
        out.setdefault(item.engine_id, []).append(item)
    return list(out.values())
