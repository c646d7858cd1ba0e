"""Model identities: what a backend answers with, as one stable string.

A persistent response cache (halo_sql.executor.response_cache) keys answers by the identity of
the model that gave them, not by the name a session calls it: two sessions that name the same
files and answer-changing options share answers, and anything that can change an answer (other
weights, a dtype, a chat template, another engine version) gives another identity.

    >>> backend_identity("sim", None, {"seed": 1})
    '["sim",null,{"seed":1}]'
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_MODEL_FILES = (".json", ".safetensors", ".bin", ".model", ".txt", ".gguf", ".tiktoken", ".py")
"""Files of a model directory that define its answers: configuration, weights, tokenizer."""


def model_fingerprint(model: str | None) -> str | None:
    """The model as the answers' author: a local directory's absolute path with the name, size
    and modification time of each file that defines answers (a directory whose weights are
    rewritten gets a new fingerprint), summarized by a digest; a hub id as given; None for
    none. Reading sizes and times costs a few system calls, never the weights themselves.

        >>> model_fingerprint("org/some-model")
        'org/some-model'
    """
    if model is None:
        return None
    path = Path(model).expanduser()
    if not path.is_dir():
        return model  # a hub id (or a path that does not exist: it cannot answer anyway)
    entries = []
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in _MODEL_FILES:
            stat = file.stat()
            entries.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.blake2b("\n".join(entries).encode(), digest_size=12).hexdigest()
    return f"{os.path.abspath(path)}#{digest}"


def backend_identity(kind: str, model: str | None, options: dict[str, Any]) -> str:
    """One string naming a backend kind, a model and the options that change its answers
    (the caller leaves out those that do not)."""
    return json.dumps(
        [kind, model_fingerprint(model), options], sort_keys=True, separators=(",", ":"),
        default=str,
    )
