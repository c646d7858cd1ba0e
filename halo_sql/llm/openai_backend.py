"""`openai`: any OpenAI-compatible server as a backend (vLLM, SGLang, llama.cpp's server, Ollama,
a hosted API).

An engine driver over HTTP: `agenerate` sends one request as soon as the runtime has it, at most
`max_concurrency` at a time (lowest `priority` first when more wait), and the server's own
continuous batching does the rest. The client is the `openai` SDK's `AsyncOpenAI`: it already
retries connection errors, timeouts, 408/409/429 and 5xx answers with exponential backoff and
jitter, honours `Retry-After`, and types every failure, so none of that is written here.

    >>> backend = OpenAIBackend("tiny", base_url="http://127.0.0.1:8000/v1")   # doctest: +SKIP
    >>> [r.text for r in backend.generate([LLMRequest("Late?", OutputSpec.boolean())])]  # doctest: +SKIP
    ['no']
    >>> backend.capabilities()["structured_outputs"]                           # doctest: +SKIP
    'vllm'

What the server offers decides how much is exact (`capabilities()` says which applies):
- constrained outputs: vLLM's `structured_outputs` request field (choice lists, JSON schema) on
  vLLM; the standard `response_format` (`json_schema`) elsewhere; where a server rejects that too,
  answers come back unconstrained and halo-sql validates them (an invalid one is NULL, counted);
- cached prompt tokens: `usage.prompt_tokens_details.cached_tokens` where the server reports it
  (vLLM with `--enable-prompt-tokens-details`, SGLang with `--enable-cache-report`, OpenAI);
  otherwise the count is unknown (`cached_prompt_tokens=None`), never 0;
- token counts for cost estimates: a local `tokenizer` directory, else the server's `/tokenize`
  (vLLM, SGLang), else an estimate; the context window: the `context_window` option, else the
  server's `max_model_len` from `/v1/models` (vLLM, SGLang), else an assumed 4096.

The API key is read from the environment variable named by `api_key_env` when the client is
created; only that name is part of the model's options (and of the database file), and the key
is removed from every message this module writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from halo_sql.errors import IncompleteBatchError, ModelError
from halo_sql.llm.base import AsyncBackend, LLMRequest, LLMResponse, OutputKind, OutputSpec

__all__ = ["OpenAIBackend", "API_KINDS", "STRUCTURED_OUTPUT_MODES"]

_log = logging.getLogger(__name__)

API_KINDS = ("chat", "completions")
"""`chat`: each prompt is one user message of /v1/chat/completions (the server applies the
model's chat template; every server has it). `completions`: the prompt is sent as is to
/v1/completions, as the in-process vLLM backend runs it (same answers on the same model)."""

STRUCTURED_OUTPUT_MODES = ("auto", "vllm", "response_format", "none")
"""How BOOLEAN/CHOICE/JSON answers are constrained. `auto`: `vllm` when /v1/models says the
server is vLLM, else `response_format`, falling back to `none` when the server rejects it."""

DEFAULT_CONTEXT_WINDOW = 4096
"""Assumed when neither the `context_window` option nor the server says (llama.cpp, Ollama, OpenAI)."""

_CHOICE_KEY = "answer"
"""`response_format` needs an object schema (OpenAI's rule); a choice becomes {"answer": label}."""


@dataclass(frozen=True)
class _ServerInfo:
    """What /v1/models told us about the server and the served model."""

    served: tuple[str, ...]
    owned_by: str | None
    max_model_len: int | None


class OpenAIBackend(AsyncBackend):
    """A model served by an OpenAI-compatible server at `base_url` under the name `model`.

    `max_concurrency`: requests in flight at once (the rest wait here, lowest priority first).
    `timeout`: seconds per HTTP attempt; `max_retries`: further attempts after a failed one
    (connection refused or lost, timeout, 408/409/429, 5xx), with exponential backoff and jitter,
    or the server's Retry-After. `api`: 'chat' or 'completions' (see API_KINDS).
    `structured_outputs`: see STRUCTURED_OUTPUT_MODES. `context_window` and `tokenizer` (a local
    model directory with tokenizer.json) override what the server reports.

    Failures: a request the server rejects (HTTP 400/422: a prompt longer than the context
    window, a schema it cannot compile) gets a response with `error` set; a server that cannot be
    reached, keeps failing, or refuses the key raises ModelError naming the model and the URL.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 64,
        timeout: float = 60.0,
        api: str = "chat",
        max_retries: int = 3,
        structured_outputs: str = "auto",
        context_window: int | None = None,
        tokenizer: str | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ModelError(
                f"model {model!r}: the openai backend needs base_url => 'http://host:port/v1' "
                "(or $OPENAI_BASE_URL)"
            )
        if api not in API_KINDS:
            raise ModelError(f"model {model!r}: api must be one of {API_KINDS}, not {api!r}")
        if structured_outputs not in STRUCTURED_OUTPUT_MODES:
            raise ModelError(
                f"model {model!r}: structured_outputs must be one of {STRUCTURED_OUTPUT_MODES}, "
                f"not {structured_outputs!r}"
            )
        if int(max_concurrency) < 1 or int(max_retries) < 0 or float(timeout) <= 0:
            raise ModelError(
                f"model {model!r}: max_concurrency must be >= 1, max_retries >= 0, timeout > 0"
            )
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.name = f"openai:{model}@{self.base_url}"
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.api = api
        self.max_retries = int(max_retries)
        self.structured_outputs = structured_outputs
        self._context_window_option = None if context_window is None else int(context_window)
        self._local_tokenizer: Any = None
        if tokenizer is not None:
            from halo_sql.llm.tokenizer import HFTokenizer

            self._local_tokenizer = HFTokenizer(tokenizer)
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._key: str | None = None
        self._sync: Any = None
        self._async: tuple[asyncio.AbstractEventLoop, Any, _PriorityGate] | None = None
        self._info: _ServerInfo | None = None
        self._info_failed = False
        self._mode: str | None = None if structured_outputs == "auto" else structured_outputs
        self._tokenize = tokenizer is None  # False once the server turned out to have none
        self._token_counts: OrderedDict[str, int] = OrderedDict()
        self._label_budget: dict[tuple[str, ...], int] = {}
        self._cached_reported: bool | None = None

    # -- identity and capabilities ----------------------------------------------------------

    @property
    def identity(self) -> str:
        """A stable key for what this backend answers (for a persistent response cache): the
        server, the served model and the options that change answers; not concurrency,
        timeouts, retries or the key."""
        return json.dumps(
            ["openai", self.base_url, self.model, self.api, self.structured_outputs],
            separators=(",", ":"),
        )

    def capabilities(self) -> dict[str, str]:
        """What this server gives, as far as known so far (docs/backends.md explains each)."""
        if self._local_tokenizer is not None:
            tokens = "local tokenizer"
        elif self._tokenize:
            tokens = "server /tokenize (until it proves missing)"
        else:
            tokens = "estimate (no /tokenize on the server)"
        if self._context_window_option is not None:
            window = "option"
        elif self._info is not None and self._info.max_model_len:
            window = "server max_model_len"
        else:
            window = f"assumed {DEFAULT_CONTEXT_WINDOW}"
        cached = {None: "not seen yet", True: "reported", False: "unknown (not reported)"}
        return {
            "structured_outputs": self._mode or "auto (decided on first request)",
            "cached_tokens": cached[self._cached_reported],
            "token_counts": tokens,
            "context_window": window,
        }

    # -- the Backend protocol ---------------------------------------------------------------

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        client, gate = self._client_on_this_loop()
        if self._info is None and not self._info_failed:
            await asyncio.to_thread(self._server_info)
        if self._mode is None:
            self._mode = self._auto_mode()
        max_tokens = await self._max_tokens(request)
        await gate.acquire(priority)
        try:
            return await self._send(client, request, max_tokens)
        finally:
            gate.release()

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        """All answers, in order. Every request runs to its end even when others fail, so a
        failure never discards an answer that arrived: if any request raised, the
        IncompleteBatchError carries the answered ones (None where a request failed)."""
        from halo_sql.llm import aio

        if not requests:
            return []

        async def settle() -> list[LLMResponse | BaseException]:
            return list(
                await asyncio.gather(*(self.agenerate(r) for r in requests), return_exceptions=True)
            )

        outcomes = aio.run(settle())
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if not failures:
            return [o for o in outcomes if isinstance(o, LLMResponse)]
        answered = [o if isinstance(o, LLMResponse) else None for o in outcomes]
        first = failures[0]
        if not isinstance(first, ModelError):
            raise first
        raise IncompleteBatchError(
            f"{first.message} ({len(failures)} of {len(requests)} requests failed; "
            f"{len(requests) - len(failures)} answered)",
            responses=answered,
        ) from None

    def count_tokens(self, text: str) -> int:
        """Length of `text` in the model's tokens: the local tokenizer, else the server's
        /tokenize (remembered per text), else an estimate (`capabilities()` says which)."""
        if self._local_tokenizer is not None:
            return len(self._local_tokenizer.encode(text))
        known = self._token_counts.get(text)
        if known is not None:
            return known
        count = self._server_count(text) if self._tokenize else None
        if count is None:
            from halo_sql.llm.tokenizer import RegexTokenizer

            return len(RegexTokenizer().encode(text))
        with self._lock:
            self._token_counts[text] = count
            if len(self._token_counts) > 8192:
                self._token_counts.popitem(last=False)
        return count

    @property
    def context_window(self) -> int:
        """The `context_window` option, else the server's max_model_len, else 4096 (assumed)."""
        if self._context_window_option is not None:
            return self._context_window_option
        info = self._info
        if info is None and not self._info_failed:
            try:
                info = self._server_info()
            except ModelError:
                info = None  # unreachable now: the assumed window; the next call asks again
        if info is not None and info.max_model_len:
            return info.max_model_len
        return DEFAULT_CONTEXT_WINDOW

    def close(self) -> None:
        """Close the HTTP clients (the server keeps running: it is not ours)."""
        with self._lock:
            bound, self._async = self._async, None
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        if bound is None:
            return
        loop, client, _ = bound
        if loop.is_closed() or not loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(client.close(), loop)
        if not _on_thread_of(loop):
            # Best effort: the connections die with the loop anyway.
            with contextlib.suppress(Exception):
                future.result(timeout=5)

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.model!r}, base_url={self.base_url!r}, api={self.api!r})"

    # -- one request --------------------------------------------------------------------------

    async def _send(self, client: Any, request: LLMRequest, max_tokens: int) -> LLMResponse:
        import openai

        mode = self._mode or "none"
        while True:
            body = self._body(request, max_tokens, mode)
            try:
                if self.api == "chat":
                    answer = await client.chat.completions.create(**body)
                else:
                    answer = await client.completions.create(**body)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                message = self._scrub(_error_message(exc))
                if mode == "response_format" and self.structured_outputs == "auto" and (
                    "response_format" in message or "json_schema" in message
                ):
                    # The server does not take response_format: answers come back unconstrained
                    # from now on, and halo-sql validates them (invalid ones are NULL, counted).
                    _log.warning(
                        "%s rejects response_format (%s); constrained outputs are validated "
                        "instead of enforced", self.name, message,
                    )
                    self._mode = mode = "none"
                    continue
                return _error_response(f"{self._where()} rejected the request: {message}")
            except openai.APIError as exc:
                raise self._failure(exc) from None
            return self._response(request, answer, mode)

    def _body(self, request: LLMRequest, max_tokens: int, mode: str) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
        }
        if params.temperature > 0:
            body["seed"] = params.seed  # greedy answers do not depend on it
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        output = request.output
        if output.kind is OutputKind.TEXT or mode == "none":
            return body
        if mode == "vllm":
            constraint: dict[str, Any] = (
                {"json": output.schema} if output.kind is OutputKind.JSON
                else {"choice": list(output.labels)}
            )
            body["extra_body"] = {"structured_outputs": constraint}
        else:
            # In extra_body: the SDK's completions method has no response_format parameter,
            # while servers (vLLM, SGLang) take it on both endpoints.
            body["extra_body"] = {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": _response_schema(output)},
                }
            }
        return body

    def _response(self, request: LLMRequest, answer: Any, mode: str) -> LLMResponse:
        choice = answer.choices[0] if answer.choices else None
        if choice is None:
            text, finish = "", "error"
        elif self.api == "chat":
            text, finish = choice.message.content or "", choice.finish_reason or "stop"
        else:
            text, finish = choice.text or "", choice.finish_reason or "stop"
        if mode == "response_format" and request.output.kind in (
            OutputKind.BOOLEAN, OutputKind.CHOICE
        ):
            text = _unwrap_choice(text)
        usage = answer.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        self._cached_reported = cached is not None
        return LLMResponse(
            text=text,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=None if cached is None else int(cached),
            output_tokens=output_tokens,
            finish_reason=finish,
        )

    async def _max_tokens(self, request: LLMRequest) -> int:
        """The request's budget, raised for labels so that the longest one fits with its end
        (and its JSON wrapper under response_format): a cut-off label is no answer."""
        budget = request.params.max_tokens
        output = request.output
        if output.kind not in (OutputKind.BOOLEAN, OutputKind.CHOICE):
            return budget
        if output.labels not in self._label_budget:
            wrap = self._mode == "response_format"
            texts = [json.dumps({_CHOICE_KEY: x}) if wrap else x for x in output.labels]
            counts = await asyncio.to_thread(lambda: [self.count_tokens(t) for t in texts])
            self._label_budget[output.labels] = max(counts, default=0) + 1
        return max(budget, self._label_budget[output.labels])

    # -- failures -----------------------------------------------------------------------------

    def _where(self) -> str:
        return f"model {self.model!r} at {self.base_url}"

    def _failure(self, exc: Exception) -> ModelError:
        """A ModelError naming the model and the URL (never the key) for a failed request."""
        import openai

        attempts = f"{self.max_retries + 1} attempt{'s' if self.max_retries else ''}"
        if isinstance(exc, openai.APITimeoutError):
            what = f"no answer within the timeout of {self.timeout:g} s ({attempts})"
        elif isinstance(exc, openai.APIConnectionError):
            what = f"cannot reach the server: {_root_cause(exc)} ({attempts})"
        elif isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            source = f"${self.api_key_env}" if self.api_key_env else "no key (api_key_env unset)"
            what = f"the server refused the API key from {source} (HTTP {exc.status_code})"
        elif isinstance(exc, openai.NotFoundError):
            served = self._info.served if self._info is not None else ()
            shown = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "")
            what = (
                f"HTTP 404 from /{'chat/completions' if self.api == 'chat' else 'completions'}: "
                f"{_error_message(exc)}"
                + (f" (the server serves: {shown})" if shown else " (is the api right?)")
            )
        elif isinstance(exc, openai.APIStatusError):
            what = f"HTTP {exc.status_code} ({attempts}): {_error_message(exc)}"
        else:
            what = _error_message(exc)
        return ModelError(self._scrub(f"{self._where()}: {what}"))

    def _scrub(self, text: str) -> str:
        key = self._key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    # -- clients and server metadata ----------------------------------------------------------

    def _api_key(self) -> str:
        if self.api_key_env is None:
            # Local servers need none; the SDK wants some string (and must not fall back on a
            # key of the environment the user did not name).
            return "EMPTY"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ModelError(
                f"{self._where()}: environment variable {self.api_key_env} (api_key_env) is not set"
            )
        self._key = key
        return key

    def _client_on_this_loop(self) -> tuple[Any, _PriorityGate]:
        """The async client and gate of the running loop: an httpx connection pool belongs to
        the loop that made it, so a backend used from another loop gets a client of its own."""
        loop = asyncio.get_running_loop()
        bound = self._async
        if bound is not None and bound[0] is loop:
            return bound[1], bound[2]
        client = self._new_client(asynchronous=True)
        gate = _PriorityGate(self.max_concurrency)
        self._async = (loop, client, gate)
        return client, gate

    def _new_client(self, *, asynchronous: bool) -> Any:
        try:
            import openai
        except ImportError as exc:
            raise ModelError(
                f"{self._where()}: the openai package is not importable ({exc}); "
                "pip install 'halo-sql[openai]'"
            ) from None
        kind = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return kind(
            api_key=self._api_key(),
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def _sync_client(self) -> Any:
        with self._lock:
            if self._sync is None:
                self._sync = self._new_client(asynchronous=False)
            return self._sync

    def _server_info(self) -> _ServerInfo | None:
        """/v1/models, asked once: is the model served, by what, with which max_model_len.
        A server without /v1/models is taken as it is (None); one that cannot be reached
        raises ModelError and is asked again next time."""
        with self._probe_lock:  # the first requests of a batch arrive together: ask once
            if self._info is not None or self._info_failed:
                return self._info
            return self._probe()

    def _probe(self) -> _ServerInfo | None:
        import openai

        try:
            listing = self._sync_client().get("/models", cast_to=object)
        except openai.APIConnectionError as exc:
            raise self._failure(exc) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise self._failure(exc) from None
            _log.info("%s: no usable /v1/models (%s)", self.name, _error_message(exc))
            self._info_failed = True
            return None
        entries = listing.get("data", []) if isinstance(listing, dict) else []
        served = tuple(str(e.get("id")) for e in entries if isinstance(e, dict))
        # A name missing from the list is not refused here: some servers resolve aliases
        # (Ollama's 'llama3' is 'llama3:latest'); a 404 on the request names what is served.
        mine = next(
            (e for e in entries if isinstance(e, dict) and e.get("id") == self.model), {}
        )
        length = mine.get("max_model_len")
        info = _ServerInfo(
            served=served,
            owned_by=str(mine["owned_by"]) if mine.get("owned_by") else None,
            max_model_len=int(length) if isinstance(length, int) and length > 0 else None,
        )
        self._info = info
        return info

    def _auto_mode(self) -> str:
        info = self._info
        return "vllm" if info is not None and info.owned_by == "vllm" else "response_format"

    def _server_count(self, text: str) -> int | None:
        """The server's /tokenize count (vLLM, SGLang); None where it has none."""
        import openai

        root = self.base_url.removesuffix("/v1")
        try:
            answer = self._sync_client().post(
                f"{root}/tokenize", body={"model": self.model, "prompt": text}, cast_to=object
            )
        except openai.APIStatusError as exc:
            # 404: no such endpoint (OpenAI, Ollama); 400/422: another shape of it (llama.cpp's
            # wants `content`). Either way: estimates from now on. 5xx: just this once.
            if exc.status_code < 500 and exc.status_code not in (408, 429):
                self._tokenize = False
                _log.info("%s has no usable /tokenize; token counts are estimates", self.name)
            return None
        except openai.APIError:
            return None  # unreachable now: estimate this one, ask again next time
        if isinstance(answer, dict):
            if isinstance(answer.get("count"), int):
                return int(answer["count"])
            if isinstance(answer.get("tokens"), list):
                return len(answer["tokens"])
        self._tokenize = False
        return None


def served_models(base_url: str, api_key_env: str | None = None) -> list[str]:
    """The model names a server serves (its /v1/models).

    >>> served_models("http://127.0.0.1:8000/v1")                             # doctest: +SKIP
    ['tiny']
    """
    probe = OpenAIBackend("?", base_url=base_url, api_key_env=api_key_env, max_retries=1)
    try:
        info = probe._server_info()
    finally:
        probe.close()
    return list(info.served) if info is not None else []


class _PriorityGate:
    """At most `limit` holders at once; waiters enter lowest priority first, then in arrival
    order (an asyncio.Semaphore has no priorities)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.active < self.limit and not self._waiting:
            self.active += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # the slot arrived with the cancellation: hand it on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the slot passes to the waiter; `active` stays
                return
        self.active -= 1


def _response_schema(output: OutputSpec) -> dict[str, Any]:
    if output.kind is OutputKind.JSON:
        return output.schema or {}
    return {
        "type": "object",
        "properties": {_CHOICE_KEY: {"type": "string", "enum": list(output.labels)}},
        "required": [_CHOICE_KEY],
        "additionalProperties": False,
    }


def _unwrap_choice(text: str) -> str:
    """The label of a {"answer": label} reply; the text itself when it is not one (halo-sql's
    validation then decides)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict) and isinstance(value.get(_CHOICE_KEY), str):
        return str(value[_CHOICE_KEY])
    return text


def _error_response(message: str) -> LLMResponse:
    return LLMResponse(
        text="", prompt_tokens=0, cached_prompt_tokens=0, output_tokens=0,
        finish_reason="error", error=message,
    )


def _error_message(exc: BaseException) -> str:
    """The server's own words for an HTTP error (the `message` of its JSON body), one line."""
    body = getattr(exc, "body", None)
    said: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        said = inner.get("message") if isinstance(inner, dict) else inner
        said = said or body.get("message") or body.get("detail")
    lines = str(said or exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _root_cause(exc: BaseException) -> str:
    """'connection refused' and the like, from the transport error under the SDK's."""
    seen: BaseException = exc
    chain = [seen]
    while (seen.__cause__ or seen.__context__) is not None and len(chain) < 20:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        chain.append(seen)
    text = str(seen).strip() or type(seen).__name__
    lowered = text.lower()
    refused = any(
        isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED
        for e in chain
    )
    if refused or "refused" in lowered:
        return "connection refused"
    if "disconnected" in lowered or "reset" in lowered or "closed" in lowered:
        return f"connection lost ({text})"
    return text if len(text) <= 200 else text[:197] + "..."


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
