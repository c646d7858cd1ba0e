"""Backend profiles: the measured constants of the cost model (see `halo-sql calibrate`).

    >>> p = BackendProfile.shipped("sim")
    >>> p.block_size, p.decode_step(1) < p.decode_step(64)
    (32, True)

A profile is looked up by backend and model: a calibrated one in the profile directory
(`$HALO_PROFILE_DIR`, default `~/.cache/halo-sql/profiles`), else the shipped default for the
backend (`halo_sql/profiles/<backend>.json`), else `default.json`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

_SHIPPED = Path(__file__).resolve().parents[1] / "profiles"


@dataclass(frozen=True)
class BackendProfile:
    """How one model instance spends time (all times in seconds)."""

    name: str = "default"
    backend: str = "vllm"
    model: str | None = None
    measured: bool = False
    """True for a profile written by `halo-sql calibrate`, False for shipped defaults."""
    note: str = ""
    prefill_tokens_per_s: float = 2000.0
    """Uncached prompt tokens computed per second (prefill is roughly linear in tokens)."""
    decode_step_s: float = 0.03
    """Time of one decode step with one running sequence."""
    decode_step_per_seq_s: float = 0.002
    """Extra time per additional running sequence in a decode step (memory-bound growth)."""
    kv_cache_tokens: int = 65536
    """KV-cache capacity: bounds the prompt + output tokens of the requests in flight."""
    block_size: int = 32
    """Prefix-cache granularity: only whole blocks of a shared prefix are reused."""
    max_batch: int = 256
    """Most sequences the engine runs at once."""
    model_load_s: float = 20.0
    request_overhead_s: float = 0.0005
    call_overhead_s: float = 0.01
    """Fixed cost of one `generate` call on the backend."""
    attention_token_step_s: float = 2e-8
    """Cost per token-step of attention: a prompt of L computed tokens adds about ½·L·(L+1)."""
    text_output_tokens: float = 32.0
    """Average answer length of free-text calls (bounded by their max_tokens)."""
    context_window: int = 4096
    replicas: int = 1
    """Engines serving the model, each with its own prefix cache (placement: set from the
    model's options, never measured; halo_sql.llm.replicas)."""
    routing: str = "prefix"
    """How requests reach the replicas: 'prefix' (affinity) or 'round_robin'."""

    def decode_step(self, batch: float) -> float:
        """Time of one decode step with `batch` running sequences."""
        return self.decode_step_s + self.decode_step_per_seq_s * max(0.0, batch - 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendProfile:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> BackendProfile:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def shipped(cls, backend: str) -> BackendProfile:
        path = _SHIPPED / f"{backend}.json"
        return cls.load(path if path.is_file() else _SHIPPED / "default.json")


def profile_dir() -> Path:
    return Path(os.environ.get("HALO_PROFILE_DIR", Path.home() / ".cache" / "halo-sql" / "profiles"))


def profile_path(backend: str, model: str | None, directory: Path | None = None) -> Path:
    """Where `calibrate` stores the profile of (backend, model)."""
    stem = Path(model).name if model else "default"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{backend}-{stem}")
    return (directory or profile_dir()) / f"{safe}.json"


def find_profile(backend: str, model: str | None) -> BackendProfile:
    """The calibrated profile of (backend, model) if there is one, else the shipped default."""
    path = profile_path(backend, model)
    if path.is_file():
        try:
            return BackendProfile.load(path)
        except (OSError, ValueError, TypeError):
            pass
    return BackendProfile.shipped(backend)
