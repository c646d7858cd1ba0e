"""A recording proxy between the engine's runtime and the shared backends.

The benchmark needs the exact prompts a system sent (for the prefix-trie lower bound) and how
often it called the engine; the engine's statistics give token counts but not prompts. The
proxy forwards everything unchanged and never closes the backend it wraps (backends are shared
by every system in the run).

    >>> from halo_sql.llm.sim import SimBackend
    >>> from halo_sql.llm.base import LLMRequest
    >>> recorder = Recorder()
    >>> backend = recorder.wrap(lambda model: SimBackend())("m")
    >>> _ = backend.generate([LLMRequest("a b"), LLMRequest("a c")])
    >>> [(b.name, prompts) for b, prompts in recorder.distinct_prompts()], recorder.calls
    ([('sim', ['a b', 'a c'])], 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from halo_sql.llm.base import Backend, LLMRequest, LLMResponse


class RecordingBackend:
    """Forwards to `inner`, recording every prompt (Backend protocol)."""

    def __init__(self, inner: Backend, recorder: Recorder) -> None:
        self.inner = inner
        self.name = inner.name
        self._recorder = recorder

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        self._recorder.record(self.inner, [r.prompt for r in requests])
        return self.inner.generate(requests)

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        """The engine-driver path: each request is recorded as one call (what the engine got)."""
        self._recorder.record(self.inner, [request.prompt])
        return await self.inner.agenerate(request, priority=priority)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    def close(self) -> None:
        """Leaves the shared backend running: the harness owns its lifetime."""


class Recorder:
    """Prompts sent per backend instance, and the number of backend calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.requests = 0
        self._prompts: dict[int, tuple[Backend, list[str]]] = {}
        self._proxies: dict[int, RecordingBackend] = {}

    def wrap(self, backend_for: Callable[[str], Backend]) -> Callable[[str], Backend]:
        """A `backend_for(model)` that hands out recording proxies of the real backends."""

        def recording_backend_for(model: str) -> Backend:
            inner = backend_for(model)
            proxy = self._proxies.get(id(inner))
            if proxy is None:
                proxy = self._proxies[id(inner)] = RecordingBackend(inner, self)
            return proxy

        return recording_backend_for

    def record(self, backend: Backend, prompts: list[str]) -> None:
        self.calls += 1
        self.requests += len(prompts)
        self._prompts.setdefault(id(backend), (backend, []))[1].extend(prompts)

    def distinct_prompts(self) -> list[tuple[Backend, list[str]]]:
        """Each backend instance that received requests, with its distinct prompts sorted.
        Instances, not names: two engines may share a name but never a cache."""
        return [(b, sorted(set(prompts))) for b, prompts in self._prompts.values()]
