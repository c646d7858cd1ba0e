"""The process's one event loop for model work.

Engine drivers (vLLM's `AsyncLLM`, HTTP clients of OpenAI-compatible servers, Ray replicas) and the
executor's LLM operators all run as coroutines on a single event loop owned by a daemon thread,
`halo-loop`. One loop, because an `AsyncLLM` binds its output handler to the loop that first uses
it, and because requests of every running query must meet in one place to be deduplicated and
ordered. Synchronous callers (a DB-API cursor, a DuckDB UDF running on a DuckDB thread) hand a
coroutine to the loop and wait for its result:

    >>> async def double(x):
    ...     return 2 * x
    >>> run(double(21))
    42

Code already running on the loop must `await` instead: `run` refuses to be called there, since
the loop would wait for itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The running halo loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            started = threading.Event()
            new_loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(started.set)
                new_loop.run_forever()

            thread = threading.Thread(target=serve, name="halo-loop", daemon=True)
            thread.start()
            started.wait()
            _loop, _thread = new_loop, thread
        return _loop


def on_loop_thread() -> bool:
    """True when called from the halo loop's own thread (blocking there would deadlock)."""
    return _thread is not None and threading.current_thread() is _thread


def spawn(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule `coro` on the halo loop; its result arrives in the returned future."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the halo loop and wait for its result (from any other thread).

    An interrupt (Ctrl-C) while waiting cancels the coroutine before it propagates, so no work
    is left running for a caller that gave up.
    """
    if on_loop_thread():
        coro.close()
        raise RuntimeError("aio.run() called on the halo loop thread; await the coroutine instead")
    future = spawn(coro)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise
