"""The options each backend's models take, checked at CREATE MODEL (halo_sql.options).

    >>> check_model_options("m", "sim", {"context_window": 512})
    {'context_window': 512}
    >>> check_model_options("m", "sim", {"context_window": -5})
    Traceback (most recent call last):
    ...
    halo_sql.errors.BinderError: CREATE MODEL m: context_window must be a positive integer, got -5
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from halo_sql.errors import SourceLocation
from halo_sql.options import Option, read_options

PLACEMENT: dict[str, Option] = {
    "replicas": Option("count"),
    "cluster": Option("text"),
    "routing": Option("text"),
    "replica_num_cpus": Option("number"),
    "replica_num_gpus": Option("number"),
    "replica_start_timeout": Option("positive"),
}
"""Where a model runs, for every backend (halo_sql.llm.replicas checks the values further)."""

MODEL_OPTIONS: dict[str, dict[str, Option]] = {
    "sim": {
        "block_size": Option("count"),
        "cache_capacity_tokens": Option("count"),
        "context_window": Option("count"),
        "seed": Option("integer"),
        "latency_per_request": Option("number", maximum=60.0),
        "step_seconds": Option("number", maximum=60.0),
        "max_num_seqs": Option("count"),
        **PLACEMENT,
    },
    "openai": {
        "base_url": Option("texts"),
        "base_urls": Option("texts"),
        "api_key_env": Option("text"),
        "max_concurrency": Option("count"),
        "timeout": Option("positive"),
        "api": Option("text"),
        "max_retries": Option("integer"),
        "structured_outputs": Option("text"),
        "context_window": Option("count"),
        "tokenizer": Option("text"),
        **PLACEMENT,
    },
    "vllm": {
        "block_size": Option("count"),
        "max_model_len": Option("count"),
        "kv_cache_gib": Option("positive"),
        "dtype": Option("text"),
        "seed": Option("integer"),
        "enforce_eager": Option("boolean"),
        "max_num_seqs": Option("count"),
        "chat_template": Option("boolean"),
        "gpu_memory_utilization": Option("fraction"),
        **PLACEMENT,
    },
}
"""Known options per backend. A vllm model may take further engine arguments (passed to
`vllm.LLM`); their values must still be finite."""


def check_model_options(
    name: str,
    backend: str,
    options: Mapping[str, Any],
    locations: Mapping[str, SourceLocation] | None = None,
) -> dict[str, Any]:
    """The options of model `name` on `backend`, checked; raises BinderError naming the option."""
    return read_options(
        options, MODEL_OPTIONS.get(backend, {}), f"CREATE MODEL {name}",
        locations=locations, allow_unknown=backend == "vllm", owner=backend,
    )
