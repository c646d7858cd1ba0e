"""Keep the LLM engine's own logging out of the way of halo-sql's output, unless asked for.

Starting vLLM prints dozens of INFO and WARNING lines and progress bars, from the main process and
from the engine and worker processes it spawns. The front ends (the demo, the shell, the
benchmark) call `quiet_engine_logs()` first thing; `--verbose` skips it. It only sets environment
variables the user has not set, so an explicit `VLLM_LOGGING_LEVEL=INFO` still wins, and the
spawned processes inherit them. Errors still reach the user: vLLM's ERROR records (the cause of a
failed engine start, say) go to stderr, and halo-sql raises ModelError with the short cause.

What vLLM 0.32 honours (read in vllm/envs.py, vllm/logger.py, vllm/config/logging.py and
vllm/model_executor/model_loader/weight_utils.py):

- `VLLM_LOGGING_LEVEL` is the default of `LoggingConfig.log_level`, applied when `vllm.LLM(...)` is
  built and again in each engine and worker process from the config handed to it.
- `VLLM_LOGGING_STREAM` is that handler's stream (stdout by default, where results go).
- Records logged while a process imports vllm, before that configuration, bypass it and reach
  Python's last-resort handler on stderr ("Triton is installed, but doesn't include CPU
  backend"). `follow_environment()` sets the `vllm` logger's level early to stop them; the
  package runs it on import, and the engine's spawned processes import
  `halo_sql.llm.engine_process` as their main module before they import vllm, so it runs there
  too.
- The "Loading safetensors checkpoint shards" bar obeys the engine option `use_tqdm_on_load`
  only (vLLM passes tqdm's `disable=` itself, so `TQDM_DISABLE` does not reach it):
  `vllm_compat.engine_kwargs` sets it from `engine_logs_quiet()`.
- torch's C++ warnings ("NUMA binding: Using MEMBIND policy") follow `TORCH_CPP_LOG_LEVEL`, and
  the FutureWarnings vLLM's imports trigger follow `PYTHONWARNINGS` in the spawned processes.

    >>> quiet_engine_logs()                                    # doctest: +SKIP
    >>> os.environ["VLLM_LOGGING_LEVEL"]                       # doctest: +SKIP
    'ERROR'
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_MARKER = "HALO_QUIET_ENGINE_LOGS"
"""Set to 1 by `quiet_engine_logs`; spawned processes read it in `follow_environment`."""

QUIET_ENVIRONMENT: dict[str, str] = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    QUIET_MARKER: "1",
}
"""Variables `quiet_engine_logs` sets (each only when the user has not set it)."""


def quiet_engine_logs(*, verbose: bool = False) -> None:
    """Silence the engine's INFO/WARNING logging and progress bars in this process and in the
    processes it spawns later; with `verbose=True`, leave vLLM's logging as vLLM sets it up.

    Call it before the first engine starts (importing vllm earlier is fine)."""
    if verbose:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    follow_environment()


def engine_logs_quiet() -> bool:
    """Whether `quiet_engine_logs` is in force (in this process or the one that spawned it)."""
    return os.environ.get(QUIET_MARKER) == "1"


def follow_environment() -> None:
    """Apply the logging variables to this process now, ahead of vLLM's own configuration.

    Cheap and idempotent; a no-op unless `VLLM_LOGGING_LEVEL` or the quiet marker is set."""
    level = os.environ.get("VLLM_LOGGING_LEVEL", "").upper()
    if level in logging.getLevelNamesMapping():
        logging.getLogger("vllm").setLevel(level)
    if engine_logs_quiet():
        # PYTHONWARNINGS is read at interpreter start: it covers spawned processes, not this one.
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(vllm|torch)(\.|$)")
