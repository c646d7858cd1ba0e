"""The engines the plain-program systems run on, owned by one benchmark run.

`vllm-async` talks to an `AsyncLLM` in this process: halo's own engine when halo's backend
exposes it (`backend.async_engine`), else one started with the same engine arguments
(`clients.start_async_llm`) and shut down when the run ends; on the sim backend, halo's sim
instance itself. `langgraph` talks to an OpenAI-compatible server per model: a vLLM api_server
process (`servers.VLLMServer`) or, on the sim, `servers.SimOpenAIServer` over a sim instance of
its own (a server is a separate engine with its own cache). The workload's logical run
(`bound.py`) goes through halo's backends, coalescing the requests pending at once.

All coroutines run on one long-lived event loop (`LoopRunner`): an `AsyncLLM` binds itself to
the loop that first uses it. That is halo's loop (`halo_sql.llm.aio`) where it exists, so that
halo's engine can be shared, else a loop thread of our own. Engine and server start-up is timed
and reported apart (`start_seconds`), never inside a system's wall time. `close()` stops every
engine and server this object started, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from halo_sql.llm.base import Backend
from tpc_agentic_bench.clients import (
    AsyncLLMClient,
    BackendClient,
    CoalescingClient,
    EngineKey,
    OpenAIClient,
    Router,
    engine_key,
    start_async_llm,
    vllm_engine_kwargs,
)
from tpc_agentic_bench.workloads import LARGE_MODEL

T = TypeVar("T")


class LoopRunner:
    """Runs coroutines to completion on one event loop that lives as long as this object."""

    def __init__(self) -> None:
        self._aio: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        try:
            from halo_sql.llm import aio  # type: ignore[attr-defined]

            self._aio = aio
        except ImportError:
            ready = threading.Event()
            loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=serve, name="bench-loop", daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._aio is not None:
            return self._aio.run(coro)  # type: ignore[no-any-return]
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # an interrupt stops the work it was waiting for
            raise

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()


def _is_vllm(backend: Backend) -> bool:
    return engine_key(backend).kind == "vllm"


class Engines:
    """Per-run engines of the program systems (see the module docstring).

    `backend_for(model_name)` gives halo's shared backend of a model name; `specs` maps the
    model names to (backend kind, model directory, options) as the run defines them."""

    def __init__(
        self,
        backend_for: Callable[[str], Backend],
        specs: Mapping[str, tuple[str, str | None, Mapping[str, Any]]],
    ) -> None:
        self.loop = LoopRunner()
        self.start_seconds: dict[str, float] = {}
        """Seconds each engine or server this object started took to come up (not counted)."""
        self._backend_for = backend_for
        self._specs = dict(specs)
        self._async: dict[str, Any] = {}
        self._servers: dict[str, Any] = {}
        self._server_clients: dict[str, OpenAIClient] = {}
        self._coalescing: dict[int, CoalescingClient] = {}
        self._own_engines: list[Any] = []

    def _spec_key(self, model: str) -> str:
        kind, directory, options = self._spec(model)
        return json.dumps([kind, directory, dict(options)], sort_keys=True, default=str)

    def _spec(self, model: str) -> tuple[str, str | None, Mapping[str, Any]]:
        return self._specs.get(model) or self._specs["default"]

    # -- routers -------------------------------------------------------------------------------

    def async_router(self, models: Sequence[str]) -> Router:
        """vllm-async's clients: one AsyncLLM (or sim instance) per distinct engine."""
        return Router({name: self._async_client(name) for name in models})

    def graph_router(self, models: Sequence[str]) -> Router:
        """langgraph's clients: one OpenAI-compatible server per distinct engine."""
        return Router({name: self._server_client(name) for name in models})

    def bound_router(self, models: Sequence[str]) -> Router:
        """The logical run's clients: halo's own backends, fed in coalesced batches."""
        clients = {}
        for name in models:
            backend = self._backend_for(name)
            clients[name] = self._coalescing.setdefault(id(backend), CoalescingClient(backend))
        return Router(clients)

    def _async_client(self, model: str) -> Any:
        key = self._spec_key(model)
        client = self._async.get(key)
        if client is not None:
            return client
        backend = self._backend_for(model)
        if not _is_vllm(backend):
            client = BackendClient(backend)
        elif getattr(backend, "async_engine", None) is not None:
            # halo's engine driver shares its AsyncLLM: both systems run on the same engine.
            counters = getattr(backend, "engine_counters", None)
            client = AsyncLLMClient(backend.async_engine, str(backend.model),  # type: ignore[attr-defined]
                                    chat_template=engine_key(backend).chat_template,
                                    counters=counters if callable(counters) else None)
        else:
            _, directory, options = self._spec(model)
            assert directory is not None

            async def start() -> tuple[Any, Any, bool]:
                return start_async_llm(directory, options)

            began = time.perf_counter()
            engine, counter, chat = self.loop.run(start())
            self._own_engines.append(engine)
            self.start_seconds[f"AsyncLLM {directory}"] = round(time.perf_counter() - began, 2)
            client = AsyncLLMClient(engine, directory, chat_template=chat, counters=counter.counters)
        self._async[key] = client
        return client

    def _server_client(self, model: str) -> OpenAIClient:
        key = self._spec_key(model)
        client = self._server_clients.get(key)
        if client is not None:
            return client
        kind, directory, options = self._spec(model)
        served = LARGE_MODEL if model == LARGE_MODEL else "default"
        began = time.perf_counter()
        if kind == "sim":
            from halo_sql.llm.sim import SimBackend
            from tpc_agentic_bench.servers import SimOpenAIServer

            server: Any = SimOpenAIServer(SimBackend(directory, **options), served).start()
            engine = EngineKey("sim", directory, False)
            encode = None
        else:
            from transformers import AutoTokenizer

            from tpc_agentic_bench.servers import VLLMServer

            assert directory is not None
            kwargs, chat = vllm_engine_kwargs(directory, options)
            server = VLLMServer(kwargs, served).start()
            engine = EngineKey("vllm", directory, chat)
            tokenizer = AutoTokenizer.from_pretrained(directory)

            def encode(label: str) -> list[int]:
                return list(tokenizer.encode(label, add_special_tokens=False))

        self._servers[key] = server
        self.start_seconds[f"server {served} ({kind})"] = round(time.perf_counter() - began, 2)
        client = self._server_clients[key] = OpenAIClient(
            server.base_url, served, engine, encode_label=encode
        )
        client.server = server  # type: ignore[attr-defined]
        return client

    # -- per system ------------------------------------------------------------------------------

    def reset(self, router: Router) -> str:
        """Empty the prefix caches of the router's engines (each system starts cold); returns
        how, for the report."""
        hows = set()
        for client in router.engines:
            if isinstance(client, OpenAIClient):
                client.server.reset_prefix_cache()  # type: ignore[attr-defined]
                hows.add("server /reset_prefix_cache")
            elif isinstance(client, AsyncLLMClient) and client.async_engine in self._own_engines:
                self.loop.run(client.async_engine.reset_prefix_cache())
                hows.add("AsyncLLM.reset_prefix_cache")
            else:
                backend = self._backend_for(next(n for n, c in router.clients.items()
                                                 if c is client))
                from tpc_agentic_bench.harness import reset_prefix_cache

                hows.add(reset_prefix_cache(backend) or "none")
        return ", ".join(sorted(hows))

    @staticmethod
    def counters(router: Router) -> dict[str, int] | None:
        """Engine steps and running-sequence sums of the router's engines (None: unknown)."""
        total = {"steps": 0, "running_sum": 0}
        for client in router.engines:
            read = getattr(client, "counters", None)
            counts = read() if callable(read) else None
            if counts is None:
                return None
            total["steps"] += int(counts["steps"])
            total["running_sum"] += int(counts["running_sum"])
        return total

    def close(self) -> None:
        """Stop every engine and server this object started (also after errors)."""
        try:
            for client in self._server_clients.values():
                # Closing connections must not keep servers running.
                with contextlib.suppress(Exception):
                    self.loop.run(client.aclose())
            for engine in self._own_engines:

                async def shutdown(engine: Any = engine) -> None:
                    engine.shutdown()

                self.loop.run(shutdown())
            # Drop every reference now: AsyncLLM.__del__ shuts down again, which fails once the
            # interpreter is tearing its modules down.
            self._own_engines.clear()
            self._async.clear()
            gc.collect()
        finally:
            for server in self._servers.values():
                server.stop()
            self._servers.clear()
            self.loop.close()
