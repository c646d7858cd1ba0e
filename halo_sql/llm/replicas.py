"""Model replicas: one model served by several engines, each request routed to one of them.

    CREATE MODEL m USING vllm WITH (model => '/models/x', replicas => 2)               -- Ray actors
    CREATE MODEL m USING vllm WITH (model => '/models/x', replicas => 2, cluster => 'local')
    CREATE MODEL m USING openai WITH (model => 'x', base_url => ['http://a/v1', 'http://b/v1'])

To the runtime a replicated model is one backend, a `ReplicatedBackend`: it sees one queue per
model and needs no change. Behind `agenerate`, each request goes to one replica (a `Replica`: an
engine in this process, a server, or a Ray actor holding an engine, see `ray_replicas`), chosen by
the router, and comes back from it. Relational work never leaves the driver; only model requests
travel.

Routing (`routing => 'prefix'`, the default) sends a request to the replica that already holds
the longest prefix of its prompt, so that requests sharing an instruction, and the later steps of
a row's workflow (whose prompts extend the earlier ones), find their prefix in that replica's
cache. It is the cache-aware routing of SGLang's router and of vLLM production-stack's
prefix-aware router: the driver keeps, per replica, an approximate index of the prompt prefixes it
sent there (chained hashes of fixed-size character blocks, least recently used dropped first) and
asks each index how long a prefix of the new prompt it holds. Load is bounded by the rule of
consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018): a replica may
take a request only while its requests in flight stay within `LOAD_FACTOR` times the mean (or
below `MIN_LOAD_BOUND`), so a hot prefix spills to the others instead of queueing on one engine
while another idles. Among the
replicas under the bound the longest match wins; ties (a prefix nobody holds, or one everybody
holds) go to the replica with the fewest requests in flight, then to the one holding least.
`routing => 'round_robin'` ignores prefixes (for comparison).

    >>> from halo_sql.llm.sim import SimBackend
    >>> backend = ReplicatedBackend([LocalReplica(SimBackend()), LocalReplica(SimBackend())])
    >>> instruction = "Summarize the complaint in one short sentence for the support team: "
    >>> _ = backend.generate([LLMRequest(instruction + "late"), LLMRequest("Translate: bonjour")])
    >>> _ = backend.generate([LLMRequest(instruction + "broken")])
    >>> [s.answered for s in backend.replica_stats()]   # the second complaint followed the first
    [2, 1]

Failure: a replica that raises instead of answering (its engine died, its actor was killed, its
server stopped answering after the client's retries) is marked down, and every request it held,
in flight or not yet sent, is resubmitted to the others. The runtime awaits each request once and
gets exactly one answer for it; a request fails only when no replica is left, with an error that
names each replica's cause. A down replica stays down until the model is started again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from halo_sql import options as opt
from halo_sql.errors import BinderError, ModelError
from halo_sql.llm import aio
from halo_sql.llm.base import AsyncBackend, Backend, EngineCounters, LLMRequest, LLMResponse

if TYPE_CHECKING:
    from halo_sql.llm.registry import ModelSpec

__all__ = [
    "LocalReplica",
    "Placement",
    "PLACEMENT_OPTIONS",
    "ReplicatedBackend",
    "ReplicaStats",
    "placement_of",
    "replica_specs",
]

_log = logging.getLogger(__name__)

PLACEMENT_OPTIONS = (
    "replicas", "cluster", "routing", "replica_num_cpus", "replica_num_gpus",
    "replica_start_timeout",
)
"""Model options that say where a model runs, valid for every backend (checked here)."""

ROUTINGS = ("prefix", "round_robin")
CLUSTERS = ("local", "ray", "auto")
"""`local`: replicas in this process (sim, vllm) or the given servers (openai); `ray`: Ray actors
on a local Ray instance halo-sql starts; `auto`: Ray actors on the running cluster Ray finds
(`RAY_ADDRESS`, or one started with `ray start` on this machine); `ray://host:port`: Ray actors on
a remote cluster through Ray Client."""

LOAD_FACTOR = 1.25
"""c of the bounded-load rule: a replica takes a request while its requests in flight, counting
the new one, stay within ceil(c * (all in flight + 1) / replicas). 1.25 is the value Mirrokni et
al. recommend; lower balances harder and keeps fewer prefixes together."""

MIN_LOAD_BOUND = 8
"""Requests in flight a replica may always hold: below it the bounded-load rule does not
apply. A continuous-batching engine runs a few more sequences in the same steps at almost no
cost, while sending them elsewhere recomputes their prefix; c * mean only matters at scale."""

BLOCK_CHARS = 64
"""Characters per block of the routing index (about 16 tokens of English): prompts that agree on
their first k blocks share a prefix of at least 64*k characters."""

INDEX_BLOCKS = 1 << 15
"""Blocks remembered per replica (2M characters of prompt prefixes): about what one engine's KV
cache holds; older prefixes are forgotten first, as the engine evicts them."""


# -- placement options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a model's engines run and how requests reach them (from its options)."""

    replicas: int = 1
    cluster: str = "local"
    routing: str = "prefix"
    num_cpus: float = 1.0
    """CPUs Ray reserves for each replica's actor."""
    num_gpus: float | None = None
    """GPUs Ray reserves for each replica's actor; None: 1 for a vllm model when the cluster
    has GPUs, else 0."""
    start_timeout: float = 1800.0
    """Seconds to wait for the replicas' engines to be scheduled and loaded."""

    @property
    def on_ray(self) -> bool:
        return self.cluster != "local"

    @property
    def replicated(self) -> bool:
        """More than one engine, or an engine outside this process: a ReplicatedBackend."""
        return self.replicas > 1 or self.on_ray

    def describe(self) -> str:
        """How EXPLAIN says it, e.g. '2 replicas (Ray actors), prefix-affinity routing'."""
        where = "in this process" if not self.on_ray else (
            "Ray actors" if self.cluster in ("ray", "auto") else f"Ray actors at {self.cluster}"
        )
        count = f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"
        how = "prefix-affinity" if self.routing == "prefix" else "round-robin"
        return f"{count} ({where}), {how} routing"


def placement_of(spec: ModelSpec) -> Placement:
    """The placement `spec`'s options ask for; BinderError naming the model and the option for
    a value that makes no sense.

        >>> from halo_sql.llm.registry import ModelSpec
        >>> placement_of(ModelSpec("m", "vllm", "/models/x", {"replicas": 2})).cluster
        'ray'
        >>> placement_of(ModelSpec("m", "sim", None, {"replicas": 2, "routing": "round_robin"}))
        Placement(replicas=2, cluster='local', routing='round_robin', num_cpus=1.0, num_gpus=None, start_timeout=1800.0)
    """
    options = spec.options
    where = f"model {spec.name!r}"
    replicas = opt.count(options.get("replicas", 1), where, "replicas", maximum=4096)
    urls = _base_urls(spec) if spec.backend == "openai" else []
    if spec.backend == "openai":
        if "replicas" in options and replicas != len(urls):
            raise BinderError(
                f"{where}: an openai model has one replica per server: give base_url => "
                f"['http://a/v1', 'http://b/v1', ...] ({len(urls)} given, replicas => {replicas})"
            )
        replicas = len(urls)
    default_cluster = "ray" if spec.backend == "vllm" and replicas > 1 else "local"
    cluster = opt.text(options.get("cluster", default_cluster), where, "cluster")
    if cluster not in CLUSTERS and not cluster.startswith("ray://"):
        raise BinderError(
            f"{where}: cluster must be one of {', '.join(CLUSTERS)} or 'ray://host:port', "
            f"got {cluster!r}"
        )
    if spec.backend == "openai" and cluster != "local":
        raise BinderError(
            f"{where}: the replicas of an openai model are its servers (base_url => [...]); "
            "cluster does not apply"
        )
    routing = opt.text(options.get("routing", "prefix"), where, "routing")
    if routing not in ROUTINGS:
        raise BinderError(f"{where}: routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
    gpus = options.get("replica_num_gpus")
    return Placement(
        replicas=replicas,
        cluster=cluster,
        routing=routing,
        num_cpus=opt.number(options.get("replica_num_cpus", 1.0), where, "replica_num_cpus"),
        num_gpus=None if gpus is None else opt.number(gpus, where, "replica_num_gpus"),
        start_timeout=opt.number(
            options.get("replica_start_timeout", 1800.0), where, "replica_start_timeout",
            positive=True,
        ),
    )


def _base_urls(spec: ModelSpec) -> list[str]:
    where = f"model {spec.name!r}"
    if "base_url" in spec.options and "base_urls" in spec.options:
        raise BinderError(f"{where}: give base_url or base_urls, not both")
    given = spec.options.get("base_urls", spec.options.get("base_url"))
    if given is None:
        return [""]  # one server, named later by $OPENAI_BASE_URL (or refused there)
    urls = opt.texts(given, where, "base_url")
    return [urls] if isinstance(urls, str) else urls


def replica_specs(spec: ModelSpec, placement: Placement) -> list[ModelSpec]:
    """One spec per replica: the model's options without the placement ones (an openai model's
    replicas each get one of its servers)."""
    inner = {k: v for k, v in spec.options.items() if k not in PLACEMENT_OPTIONS}
    if spec.backend != "openai":
        return [dataclasses.replace(spec, options=dict(inner))] * placement.replicas
    urls = _base_urls(spec)
    inner.pop("base_urls", None)
    inner.pop("base_url", None)
    return [
        dataclasses.replace(spec, options={**inner, **({"base_url": url} if url else {})})
        for url in urls
    ]


def start_replicated(
    spec: ModelSpec, placement: Placement, start_one: Callable[[ModelSpec], Backend]
) -> ReplicatedBackend:
    """Start `spec`'s replicas where `placement` says (`start_one` starts one engine here)."""
    specs = replica_specs(spec, placement)
    release: Callable[[], None] | None = None
    replicas: list[Replica] = []
    if placement.on_ray:
        from halo_sql.llm import ray_replicas

        on_ray, release = ray_replicas.start_replicas(spec, placement, specs)
        replicas.extend(on_ray)
    else:
        try:
            for one in specs:
                replicas.append(LocalReplica(start_one(one)))
        except BaseException:
            for started in replicas:
                with contextlib.suppress(Exception):
                    started.close()
            raise
    return ReplicatedBackend(
        replicas, routing=placement.routing, model_name=spec.name, model=spec.model,
        placement=placement, on_close=release,
    )


# -- replicas -------------------------------------------------------------------------------------


class ReplicaFailed(Exception):
    """A replica could not answer: its engine, actor or server is gone (message: the cause)."""


class Replica(Protocol):
    """One engine of a replicated model, as the ReplicatedBackend drives it."""

    name: str
    """This replica, e.g. 'vllm:/models/x on node 5e1f02ab pid 812'."""
    engine_name: str
    """The engine it runs, the same for every replica of a model, e.g. 'vllm:/models/x'."""

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        """The answer; raises when the replica cannot answer at all (then it is marked down)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def context_window(self) -> int: ...

    def engine_counters(self) -> EngineCounters | None: ...

    def reset_cache(self) -> None: ...

    def stop(self) -> None:
        """End the replica now (it died or was taken out): its requests in flight fail."""
        ...

    def close(self) -> None:
        """Release the replica's engine cleanly."""
        ...


class LocalReplica:
    """A replica that is a backend in this process (a sim model, a vLLM engine, a server)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = self.engine_name = backend.name

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        return await self.backend.agenerate(request, priority=priority)

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    @property
    def context_window(self) -> int:
        return self.backend.context_window

    def engine_counters(self) -> EngineCounters | None:
        read = getattr(self.backend, "engine_counters", None)
        return read() if callable(read) else None

    def reset_cache(self) -> None:
        reset = getattr(self.backend, "reset_cache", None)
        if callable(reset):
            reset()

    def stop(self) -> None:
        self.backend.close()

    def close(self) -> None:
        self.backend.close()


# -- routing --------------------------------------------------------------------------------------


def block_hashes(prompt: str, block_chars: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the whole `block_chars`-character blocks of `prompt`: the k-th hash
    stands for the first k blocks, so two prompts share their first k hashes exactly when they
    share their first k blocks (as vLLM names its KV-cache blocks).

        >>> a, b = block_hashes("x" * 70 + "a", 32), block_hashes("x" * 70 + "b", 32)
        >>> len(a), a == b
        (2, True)
    """
    hashes = []
    value = 0
    for start in range(0, len(prompt) - block_chars + 1, block_chars):
        value = hash((value, prompt[start : start + block_chars]))
        hashes.append(value)
    return hashes


class PrefixIndex:
    """The prompt prefixes sent to one replica, as block hashes, least recently used dropped
    first past `capacity` blocks: what the router believes the replica's prefix cache holds."""

    def __init__(self, capacity: int = INDEX_BLOCKS) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt with these hashes are held."""
        held = 0
        for value in hashes:
            if value not in self._blocks:
                break
            held += 1
        return held

    def add(self, hashes: Sequence[int]) -> None:
        for value in hashes:
            self._blocks[value] = None
            self._blocks.move_to_end(value)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


class _Slot:
    """A replica and what the backend knows about it."""

    def __init__(self, position: int, replica: Replica) -> None:
        self.position = position
        self.replica = replica
        self.index = PrefixIndex()
        self.in_flight = 0
        self.sent = 0
        self.answered = 0
        self.moved = 0
        self.alive = True
        self.cause: str | None = None
        self._down: asyncio.Future[None] | None = None

    def down_signal(self) -> asyncio.Future[None]:
        """A future of the running loop that completes when the replica is marked down."""
        loop = asyncio.get_running_loop()
        if self._down is None or self._down.get_loop() is not loop:
            self._down = loop.create_future()
            if not self.alive:
                self._down.set_result(None)
        return self._down


class PrefixRouter:
    """Longest held prefix among the replicas under the load bound (see the module docstring)."""

    name = "prefix"

    def __init__(self, load_factor: float = LOAD_FACTOR, block_chars: int = BLOCK_CHARS) -> None:
        self.load_factor = load_factor
        self.block_chars = block_chars

    def choose(self, request: LLMRequest, candidates: Sequence[_Slot]) -> _Slot:
        hashes = block_hashes(request.prompt, self.block_chars)
        total = sum(s.in_flight for s in candidates)
        bound = max(MIN_LOAD_BOUND, math.ceil(self.load_factor * (total + 1) / len(candidates)))
        # Never empty: the least loaded replica is below the mean, hence below the bound.
        eligible = [s for s in candidates if s.in_flight < bound]
        best = min(
            eligible, key=lambda s: (-s.index.match(hashes), s.in_flight, len(s.index), s.position)
        )
        best.index.add(hashes)
        return best


class RoundRobinRouter:
    """Each request to the next replica in turn, prefixes ignored."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last = -1

    def choose(self, request: LLMRequest, candidates: Sequence[_Slot]) -> _Slot:
        later = [s for s in candidates if s.position > self._last]
        chosen = later[0] if later else candidates[0]
        self._last = chosen.position
        return chosen


_ROUTERS: dict[str, Callable[[], PrefixRouter | RoundRobinRouter]] = {
    "prefix": PrefixRouter,
    "round_robin": RoundRobinRouter,
}


# -- the backend ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStats:
    """One replica as seen from the driver (`ReplicatedBackend.replica_stats()`)."""

    position: int
    name: str
    alive: bool
    sent: int
    """Requests routed to it (a resubmitted request counts on each replica it went to)."""
    answered: int
    moved: int
    """Requests it held when it went down, resubmitted to the others."""
    in_flight: int
    cause: str | None
    """Why it is down."""


class ReplicatedBackend(AsyncBackend):
    """One model on several replicas (see the module docstring).

    `routing`: 'prefix' or 'round_robin'. `on_close` runs once after the replicas are closed
    (the Ray replicas release their cluster connection there).
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        routing: str = "prefix",
        model_name: str = "",
        model: str | None = None,
        placement: Placement | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if not replicas:
            raise ModelError(f"model {model_name!r}: no replicas")
        self._slots = [_Slot(i, r) for i, r in enumerate(replicas)]
        self.model_name = model_name
        self.model = model
        """The model directory or id every replica runs (benchmarks read it)."""
        self.placement = placement or Placement(replicas=len(replicas))
        self.name = f"{replicas[0].engine_name} x{len(replicas)}" + (
            f" ({self.placement.cluster})" if self.placement.on_ray else ""
        )
        self.resubmitted = 0
        """Requests answered by another replica after theirs went down."""
        self._router = self._make_router(routing)
        self._on_close = on_close
        self._closed = False
        self._lock = threading.Lock()

    # -- the Backend protocol ---------------------------------------------------------------

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        """The answer of one replica: the router's choice, or after a failure the next one."""
        tried: set[int] = set()
        while True:
            candidates = [s for s in self._slots if s.alive and s.position not in tried]
            if not candidates:
                raise ModelError(self._none_left())
            slot = self._router.choose(request, candidates)
            slot.in_flight += 1
            slot.sent += 1
            try:
                response = await self._on(slot, request, priority)
            except ReplicaFailed:
                slot.moved += 1
                tried.add(slot.position)
                self.resubmitted += 1
                continue
            finally:
                slot.in_flight -= 1
            slot.answered += 1
            return response

    async def _on(self, slot: _Slot, request: LLMRequest, priority: int) -> LLMResponse:
        down = slot.down_signal()
        if down.done():
            raise ReplicaFailed(slot.cause or "down")
        call = asyncio.ensure_future(slot.replica.agenerate(request, priority=priority))
        try:
            await asyncio.wait((call, down), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            call.cancel()  # nobody waits for the answer any more: the replica aborts it
            raise
        if call.done() and not call.cancelled() and call.exception() is None:
            return call.result()  # an answer that came with the replica's end still counts
        if not call.done():
            call.cancel()
            raise ReplicaFailed(slot.cause or "down")
        cause = "its request was cancelled" if call.cancelled() else _short(call.exception())
        self._mark_down(slot, cause)
        raise ReplicaFailed(cause)

    def count_tokens(self, text: str) -> int:
        return self._any_alive().replica.count_tokens(text)

    @property
    def context_window(self) -> int:
        return min(s.replica.context_window for s in self._slots)

    def close(self) -> None:
        """Close every replica, then release what they ran on; calling it twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True

        def close(slot: _Slot) -> None:
            try:
                slot.replica.close()
            except Exception as exc:  # one replica's failure must not keep the others up
                _log.warning("model %s: closing replica %s failed: %s",
                             self.model_name, slot.replica.name, _short(exc))

        try:
            # Side by side: each engine takes seconds to stop.
            with concurrent.futures.ThreadPoolExecutor(len(self._slots)) as pool:
                list(pool.map(close, self._slots))
        finally:
            if self._on_close is not None:
                self._on_close()

    # -- what the engines did, and control ----------------------------------------------------

    @property
    def replicas(self) -> list[Replica]:
        return [s.replica for s in self._slots]

    @property
    def routing(self) -> str:
        return self._router.name

    def set_routing(self, routing: str) -> None:
        """Route with 'prefix' or 'round_robin' from now on (comparisons on the same engines);
        the routing index starts empty, so reset the engines' caches too for a fair start."""
        self._router = self._make_router(routing)
        for slot in self._slots:
            slot.index.clear()

    def replica_stats(self) -> list[ReplicaStats]:
        return [
            ReplicaStats(s.position, s.replica.name, s.alive, s.sent, s.answered, s.moved,
                         s.in_flight, s.cause)
            for s in self._slots
        ]

    def engine_counters(self) -> EngineCounters | None:
        """The live replicas' engine counters, summed (None when no replica counts them)."""
        total: EngineCounters | None = None
        for slot in self._slots:
            if not slot.alive:
                continue
            counters = slot.replica.engine_counters()
            if counters is None:
                continue
            total = total or EngineCounters()
            total.steps += counters.steps
            total.running_sum += counters.running_sum
            total.requests += counters.requests
        return total

    def reset_cache(self) -> None:
        """Empty every live replica's prefix cache, and the router's picture of them."""
        for slot in self._slots:
            slot.index.clear()
            if slot.alive:
                slot.replica.reset_cache()

    def stop_replica(self, position: int, reason: str = "stopped by request") -> None:
        """Take replica `position` out now, as if it had died: the requests it holds go to the
        others. Callable from any thread."""
        slot = self._slots[position]
        if aio.on_loop_thread():
            self._mark_down(slot, reason)
            return

        async def mark() -> None:
            self._mark_down(slot, reason)

        aio.run(mark())

    # -- helpers ------------------------------------------------------------------------------

    def _mark_down(self, slot: _Slot, cause: str) -> None:
        """On the loop: the replica is gone; its waiting requests move on at once."""
        if not slot.alive:
            return
        slot.alive = False
        slot.cause = cause
        left = sum(1 for s in self._slots if s.alive)
        _log.warning(
            "model %s: replica %d (%s) is down (%s); %d replica(s) left",
            self.model_name, slot.position, slot.replica.name, cause, left,
        )
        if slot._down is not None and not slot._down.done():
            slot._down.set_result(None)

        def stop() -> None:
            try:
                slot.replica.stop()
            except Exception as exc:  # it is down already; stopping is only tidying up
                _log.debug("stopping replica %s: %s", slot.replica.name, exc)

        # Stopping (killing an actor, shutting an engine down) blocks: not on the loop.
        threading.Thread(target=stop, name="halo-replica-stop", daemon=True).start()

    def _none_left(self) -> str:
        causes = "; ".join(f"replica {s.position} ({s.replica.name}): {s.cause}" for s in self._slots)
        return f"model {self.model_name!r}: no replica left to answer ({causes})"

    def _any_alive(self) -> _Slot:
        for slot in self._slots:
            if slot.alive:
                return slot
        raise ModelError(self._none_left())

    def _make_router(self, routing: str) -> PrefixRouter | RoundRobinRouter:
        if routing not in _ROUTERS:
            raise ModelError(
                f"model {self.model_name!r}: routing must be one of {', '.join(ROUTINGS)}, "
                f"got {routing!r}"
            )
        return _ROUTERS[routing]()

    def __repr__(self) -> str:
        alive = sum(1 for s in self._slots if s.alive)
        return f"ReplicatedBackend({self.name!r}, {alive}/{len(self._slots)} alive, {self.routing})"


def _short(exc: BaseException | None) -> str:
    """The first line of an exception's message (Ray's carry whole remote tracebacks)."""
    if exc is None:
        return "unknown failure"
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first or type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."
