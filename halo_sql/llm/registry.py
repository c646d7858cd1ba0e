"""Model specifications and the process-wide pool of backend instances.

A backend (a vLLM engine especially) is expensive to start, so every connection in the process that
names the same backend, model files and options shares one instance.

    >>> spec = ModelSpec("m", "sim")
    >>> backend_for(spec) is backend_for(ModelSpec("other-name", "sim"))
    True
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from halo_sql.errors import BinderError, ModelError
from halo_sql.llm.base import Backend
from halo_sql.llm.models import resolve_model_name

BACKENDS = ("vllm", "sim", "openai")

OPENAI_OPTIONS = {
    "base_url", "api_key_env", "max_concurrency", "timeout", "api", "max_retries",
    "structured_outputs", "context_window", "tokenizer",
}
"""Options of `CREATE MODEL m USING openai WITH (...)` (halo_sql.llm.openai_backend)."""


@dataclass(frozen=True)
class ModelSpec:
    """A named model: which backend serves it, from which files, with which engine options."""

    name: str
    backend: str
    model: str | None = None
    """Model directory or hub id (optional for sim: it then uses a regex tokenizer)."""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def instance_key(self) -> str:
        return json.dumps([self.backend, self.model, self.options], sort_keys=True, default=str)


_pool: dict[str, Backend] = {}
_pool_lock = threading.Lock()


def backend_for(spec: ModelSpec) -> Backend:
    """The shared backend instance for `spec`, started on first use."""
    key = spec.instance_key
    with _pool_lock:
        backend = _pool.get(key)
        if backend is None:
            backend = _start(spec)
            _pool[key] = backend
        return backend


def running() -> frozenset[str]:
    """Keys of the backends started so far (pair with `shutdown_started_since`)."""
    with _pool_lock:
        return frozenset(_pool)


def shutdown_started_since(before: frozenset[str]) -> None:
    """Close the backends started after `running()` returned `before`, and only those: a
    command run inside a larger process (a test session, a notebook) leaves the engines it
    found running for their owners."""
    with _pool_lock:
        for key in [k for k in _pool if k not in before]:
            _pool.pop(key).close()


def shutdown_all() -> None:
    """Close every backend of the process (tests and the shell call it at exit)."""
    with _pool_lock:
        for backend in _pool.values():
            backend.close()
        _pool.clear()


def _start(spec: ModelSpec) -> Backend:
    from halo_sql.llm.replicas import placement_of, replica_specs, start_replicated

    placement = placement_of(spec)
    if placement.replicated:  # several engines, or one on a Ray cluster: halo_sql.llm.replicas
        return start_replicated(spec, placement, start_backend)
    return start_backend(replica_specs(spec, placement)[0])


def start_backend(spec: ModelSpec) -> Backend:
    """Start one engine for `spec` here, outside the pool (a replica's engine: the pool holds
    the replicated model). `spec` carries no placement options (halo_sql.llm.replicas)."""
    # A known model name (smollm2-135m) becomes its pulled directory and its engine defaults.
    model, defaults = resolve_model_name(spec.model)
    options = dict(spec.options)
    if spec.backend == "sim":
        from halo_sql.llm.sim import SimBackend

        allowed = {
            "block_size", "cache_capacity_tokens", "context_window", "seed", "latency_per_request",
            "step_seconds", "max_num_seqs",
        }
        _check_options(spec, options, allowed)
        return SimBackend(model, **options)
    if spec.backend == "vllm":
        if not model:
            raise BinderError(f"model {spec.name!r}: the vllm backend needs model => 'dir-or-hub-id'")
        from halo_sql.llm.vllm_backend import VLLMBackend

        try:
            return VLLMBackend(model, **{**defaults, **options})
        except TypeError as exc:
            raise ModelError(f"model {spec.name!r}: bad option for vllm: {exc}") from None
    if spec.backend == "openai":
        check_spec(spec)
        from halo_sql.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(str(spec.model), **options)
    raise BinderError(f"model {spec.name!r}: unknown backend {spec.backend!r} (use one of {BACKENDS})")


def check_spec(spec: ModelSpec) -> None:
    """Refuse, before a model is stored, options its backend does not take: above all an API
    key, which would land in the database file (the openai backend takes the NAME of the
    environment variable that holds it: api_key_env), and placement options that make no sense
    (halo_sql.llm.replicas)."""
    from halo_sql.llm.replicas import PLACEMENT_OPTIONS, placement_of

    placement_of(spec)  # for openai: also its list of servers, one per replica
    if spec.backend != "openai":
        return
    if "api_key" in spec.options:
        raise BinderError(
            f"model {spec.name!r}: keys are never stored; name the environment variable that "
            "holds it instead, e.g. api_key_env => 'OPENAI_API_KEY'"
        )
    if not spec.model:
        raise BinderError(
            f"model {spec.name!r}: the openai backend needs model => 'served-model-name'"
        )
    options = {k: v for k, v in spec.options.items() if k not in PLACEMENT_OPTIONS}
    _check_options(spec, options, OPENAI_OPTIONS | {"base_urls"})


def _check_options(spec: ModelSpec, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BinderError(
            f"model {spec.name!r}: unknown option(s) {unknown} for {spec.backend} "
            f"(allowed: {sorted(allowed)})"
        )
