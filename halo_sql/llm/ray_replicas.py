"""Model replicas as Ray actors: each actor holds one engine; halo-sql starts and stops them.

    CREATE MODEL m USING vllm WITH (model => '/models/x', replicas => 4, cluster => 'auto',
                                    replica_num_gpus => 1)

What Ray does here, through its own APIs (nothing of it is re-implemented):
- `ray.init` starts a local Ray instance (`cluster => 'ray'`) or connects to a running cluster
  (`'auto'`: the one `RAY_ADDRESS` names or `ray start` runs on this machine; `'ray://host:port'`:
  a remote one through Ray Client). If this process is connected to Ray already, replicas run
  there and the connection stays the owner's.
- `ray.remote(EngineActor).options(num_cpus=..., num_gpus=..., scheduling_strategy="SPREAD")`
  places one actor per replica on a node that has the resources, spreading them over the nodes;
  Ray gives each actor its own GPUs (CUDA_VISIBLE_DEVICES).
- Async actors: the actor runs the engine's event loop and many `agenerate` calls at once; the
  driver awaits their ObjectRefs on the halo loop. `ray.cancel` of such a call cancels its
  coroutine in the actor, which aborts the request in the engine (a LIMIT was reached).
- A dead actor (killed, its node lost, its engine process crashed) fails every call it held
  with a RayActorError; `ray.kill` ends an actor and the processes it started (vLLM's engine
  core); `runtime_env` carries the engine's settings and logging to the actors and, on a
  cluster halo-sql did not start, halo_sql's own code to the workers (`py_modules`).

What halo-sql adds (halo_sql.llm.replicas): prefix-affinity routing and failover, and a count of
the models using a Ray instance it started, which it shuts down when the last of them closes.

Where models load from: each actor loads the model on its own node. A local directory must exist
at the same path on every node (a shared file system, or the same copy on each); a Hugging Face
id is downloaded by each node into its own cache. A known name (smollm2-135m) is pulled here
first on a local instance, and pulled by each node on a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from halo_sql.errors import ModelError
from halo_sql.llm.base import EngineCounters, LLMRequest, LLMResponse
from halo_sql.llm.logs import QUIET_ENVIRONMENT, engine_logs_quiet
from halo_sql.llm.replicas import Placement, ReplicaFailed

if TYPE_CHECKING:
    from halo_sql.llm.registry import ModelSpec

_log = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 128 << 20
"""Object store of a Ray instance halo-sql starts: requests and answers are small, and Ray's
default (30% of the RAM) would take shared memory the engines need."""

ACTOR_CONCURRENCY = 4096
"""Calls an actor runs at once. The engine runs at most its max_num_seqs; the rest wait in its
queue, in the order they were routed (Ray's default of 1000 would hold the rest back)."""

CLOSE_TIMEOUT_S = 60.0
"""How long a closing replica may take to stop its engine cleanly before it is killed."""

INSTALL_HINT = "pip install 'halo-sql[ray]'"


def import_ray() -> ModuleType:
    """Import ray, or raise ModelError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ModelError(
            f"Ray is not importable ({exc}); model replicas on a cluster need it: {INSTALL_HINT}, "
            "or run the replicas in this process with cluster => 'local'"
        ) from None
    return ray


# -- the connection to Ray ------------------------------------------------------------------------


class _Connection:
    """This process's use of Ray: how many replicated models hold it, and whether halo-sql
    called `ray.init` (then it calls `ray.shutdown` when the last of them lets go)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases = 0
        self.ours = False
        self.started_local = False
        """halo-sql started the Ray instance itself, on this machine (cluster => 'ray')."""


_connection = _Connection()


class ClusterLease:
    """One replicated model's hold on the Ray connection; `release` it when the model closes."""

    def __init__(self, ray: ModuleType, cluster: str) -> None:
        self._ray = ray
        self._released = False
        with _connection.lock:
            if not ray.is_initialized():
                _init(ray, cluster)
                _connection.ours = True
                _connection.started_local = cluster == "ray"
            _connection.leases += 1
            self.started_local = _connection.started_local and _connection.ours

    def release(self) -> None:
        with _connection.lock:
            if self._released:
                return
            self._released = True
            _connection.leases -= 1
            if _connection.leases == 0 and _connection.ours:
                _connection.ours = _connection.started_local = False
                self._ray.shutdown()


def acquire(cluster: str) -> ClusterLease:
    """Hold the Ray connection `cluster` names, starting or connecting to it if needed (tests
    hold one for their whole session so that Ray starts once)."""
    return ClusterLease(import_ray(), cluster)


def _init(ray: ModuleType, cluster: str) -> None:
    quiet = engine_logs_quiet()
    kwargs: dict[str, Any] = {
        "namespace": "halo-sql",
        # Worker output (vLLM's logging inside the actors) reaches the driver only when asked
        # for; failures still come back as exceptions with their cause.
        "log_to_driver": not quiet,
        "logging_level": logging.ERROR if quiet else logging.WARNING,
    }
    if cluster == "ray":
        kwargs.update(address="local", include_dashboard=False,
                      object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    else:
        kwargs["address"] = "auto" if cluster == "auto" else cluster
        # The workers of a cluster halo-sql did not start run exactly the driver's halo_sql: Ray
        # uploads the package (a local directory is accepted at the job level only).
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])]}
    try:
        ray.init(**kwargs)
    except Exception as exc:
        raise ModelError(f"could not start or reach Ray (cluster => {cluster!r}): {exc}") from None


def _runtime_env() -> dict[str, Any]:
    """The actors' environment: the engine's settings and logging as set in this process (on
    a cluster the workers do not inherit the driver's environment)."""
    names = [*QUIET_ENVIRONMENT, "TOKENIZERS_PARALLELISM"]
    names += [name for name in os.environ if name.startswith("VLLM_")]
    return {"env_vars": {name: os.environ[name] for name in names if name in os.environ}}


# -- the actor ------------------------------------------------------------------------------------


class EngineActor:
    """Runs inside a Ray worker: one engine (any halo-sql backend) and the calls it answers."""

    def __init__(self, name: str, backend: str, model: str | None, options: dict[str, Any]) -> None:
        from halo_sql.llm.logs import follow_environment
        from halo_sql.llm.registry import ModelSpec, start_backend

        follow_environment()
        self._backend = start_backend(ModelSpec(name, backend, model, options))

    def describe(self) -> dict[str, Any]:
        import ray

        return {
            "name": self._backend.name,
            "context_window": int(self._backend.context_window),
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    async def agenerate(self, request: LLMRequest, priority: int) -> LLMResponse:
        return await self._backend.agenerate(request, priority=priority)

    def count_tokens(self, text: str) -> int:
        return int(self._backend.count_tokens(text))

    def engine_counters(self) -> EngineCounters | None:
        read = getattr(self._backend, "engine_counters", None)
        return read() if callable(read) else None

    async def reset_cache(self) -> None:
        # On the actor's own loop: the engine is bound to it (VLLMBackend.areset_cache).
        areset = getattr(self._backend, "areset_cache", None)
        if callable(areset):
            await areset()
            return
        reset = getattr(self._backend, "reset_cache", None)
        if callable(reset):
            reset()

    def close(self) -> None:
        self._backend.close()


# -- the driver's side ------------------------------------------------------------------------------


class RayReplica:
    """A replica that is a Ray actor holding an engine (see halo_sql.llm.replicas.Replica)."""

    def __init__(self, ray: ModuleType, actor: Any, info: dict[str, Any]) -> None:
        self._ray = ray
        self.actor = actor
        """The actor handle (`ray.kill(replica.actor)` is what a crash looks like)."""
        self.node = str(info["node"])
        self.pid = int(info["pid"])
        self.engine_name = str(info["name"])
        self.name = f"{self.engine_name} on node {self.node[:8]} pid {self.pid}"
        self._context_window = int(info["context_window"])
        self._token_counts: OrderedDict[str, int] = OrderedDict()

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        ref = self.actor.agenerate.remote(request, priority)
        try:
            response: LLMResponse = await ref
        except asyncio.CancelledError:
            self._ray.cancel(ref)  # cancels the actor's coroutine: the engine aborts the request
            raise
        except self._ray.exceptions.RayTaskError as exc:
            raise ReplicaFailed(f"its engine failed: {_cause(exc)}") from None
        except self._ray.exceptions.RayError as exc:
            raise ReplicaFailed(f"its Ray actor is gone: {_cause(exc)}") from None
        return response

    def count_tokens(self, text: str) -> int:
        """The replica's own count, asked once per text (a round trip to the actor)."""
        known = self._token_counts.get(text)
        if known is None:
            known = int(self._ray.get(self.actor.count_tokens.remote(text)))
            self._token_counts[text] = known
            if len(self._token_counts) > 4096:
                self._token_counts.popitem(last=False)
        return known

    @property
    def context_window(self) -> int:
        return self._context_window

    def engine_counters(self) -> EngineCounters | None:
        counters: EngineCounters | None = self._ray.get(self.actor.engine_counters.remote())
        return counters

    def reset_cache(self) -> None:
        self._ray.get(self.actor.reset_cache.remote())

    def stop(self) -> None:
        self._ray.kill(self.actor, no_restart=True)

    def close(self) -> None:
        try:
            self._ray.get(self.actor.close.remote(), timeout=CLOSE_TIMEOUT_S)
        except Exception as exc:  # a dead or stuck actor is killed all the same
            _log.debug("closing %s: %s", self.name, exc)
        finally:
            self._ray.kill(self.actor, no_restart=True)


def start_replicas(
    spec: ModelSpec, placement: Placement, specs: Sequence[ModelSpec]
) -> tuple[list[RayReplica], Callable[[], None]]:
    """Start one actor per spec of `specs` and wait until every engine is loaded; returns the
    replicas and the function that releases their Ray connection (after closing them)."""
    ray = import_ray()
    lease = acquire(placement.cluster)
    actors: list[Any] = []
    try:
        gpus = placement.num_gpus
        if gpus is None:
            has_gpus = ray.cluster_resources().get("GPU", 0) >= 1
            gpus = 1.0 if spec.backend == "vllm" and has_gpus else 0.0
        if lease.started_local:
            _check_fits(ray, spec.name, len(specs), placement.num_cpus, gpus)
        runtime_env = _runtime_env()
        remote = ray.remote(EngineActor)
        for one in specs:
            model = one.model
            if lease.started_local:
                from halo_sql.llm.models import resolve_model_name

                model, _ = resolve_model_name(model)  # pulled once, here, not by each actor
            actors.append(
                remote.options(
                    num_cpus=placement.num_cpus,
                    num_gpus=gpus,
                    max_concurrency=ACTOR_CONCURRENCY,
                    max_restarts=0,
                    scheduling_strategy="SPREAD",
                    runtime_env=runtime_env,
                ).remote(spec.name, one.backend, model, dict(one.options))
            )
        infos = _wait_started(ray, actors, spec.name, placement, gpus)
    except BaseException as exc:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as error:
                _log.debug("killing a replica that did not start: %s", error)
        lease.release()
        if isinstance(exc, Exception) and not isinstance(exc, ModelError):
            raise ModelError(
                f"model {spec.name!r}: could not start its replicas on Ray: {_cause(exc)}"
            ) from exc
        raise
    return [RayReplica(ray, a, info) for a, info in zip(actors, infos, strict=True)], lease.release


def _check_fits(ray: ModuleType, name: str, count: int, cpus: float, gpus: float) -> None:
    """On a Ray instance of this machine alone, replicas that cannot all be placed would wait
    forever: refuse them now, naming what is missing."""
    have = ray.cluster_resources()
    for resource, each, option in (("CPU", cpus, "replica_num_cpus"),
                                   ("GPU", gpus, "replica_num_gpus")):
        need = count * each
        if need > have.get(resource, 0) + 1e-9:
            raise ModelError(
                f"model {name!r}: {count} replicas with {option} => {each:g} need {need:g} "
                f"{resource}s; this machine's Ray instance has {have.get(resource, 0):g} "
                f"(lower {option} or the number of replicas)"
            )


def _wait_started(
    ray: ModuleType, actors: list[Any], name: str, placement: Placement, gpus: float
) -> list[dict[str, Any]]:
    refs = [actor.describe.remote() for actor in actors]
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=placement.start_timeout)
    if pending:
        raise ModelError(
            f"model {name!r}: {len(pending)} of {len(refs)} replicas did not start within "
            f"{placement.start_timeout:g} s (replica_start_timeout); each needs "
            f"{placement.num_cpus:g} CPU and {gpus:g} GPU, and the Ray cluster has "
            f"{ray.available_resources()} free"
        )
    infos = []
    for position, ref in enumerate(refs):
        try:
            infos.append(ray.get(ref))
        except ray.exceptions.RayError as exc:
            raise ModelError(
                f"model {name!r}: replica {position} failed to start on Ray: {_cause(exc)}"
            ) from None
    return infos


def _cause(exc: BaseException) -> str:
    """The line of a Ray error a user can act on: the remote exception's own message when Ray
    carries it (`cause`), else Ray's first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        exc = cause
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # A creation failure's text ends with the actor's own exception ("ModelError: ...").
    errors = [line for line in lines if "Error: " in line and not line.startswith("ray::")]
    text = errors[-1] if errors else (lines[0] if lines else type(exc).__name__)
    return text if len(text) <= 300 else text[:297] + "..."
