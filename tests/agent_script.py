"""A scripted backend for agent tests: a Python function decides every reply of every row.

    backend = ScriptedBackend(lambda turn: {"action": "final", "answer": turn.input["id"] > 2})
    use_backend(con, backend)

`turn` tells the script what the agent sees: the row's input, the step number, the results of
its tool calls so far. The backend records every batch it was given (`batches`, `requests`),
so tests can count batched model calls.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from halo_sql.executor.runtime import LLMRuntime
from halo_sql.llm.base import LLMRequest, LLMResponse


@dataclass
class Turn:
    """One reply to write: what the agent of one row sees at one step."""

    input: dict[str, Any]
    step: int
    last: int
    results: list[str]
    """Tool results seen so far (`error: ...` for failed calls), oldest first."""
    notes: list[str]
    """Every transcript entry so far (tool calls and invalid-reply notices)."""
    schema: dict[str, Any]
    prompt: str


@dataclass
class ScriptedBackend:
    script: Callable[[Turn], Any]
    """Returns the reply: a dict (sent as JSON) or raw text; an LLMResponse is sent as is."""
    name: str = "scripted"
    batches: list[int] = field(default_factory=list)
    requests: list[list[LLMRequest]] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        with self._lock:
            self.batches.append(len(requests))
            self.requests.append(list(requests))
            self.batch_times.append(time.monotonic())
        return [self._answer(r) for r in requests]

    def _answer(self, request: LLMRequest) -> LLMResponse:
        reply = self.script(read_turn(request))
        if isinstance(reply, LLMResponse):
            return reply
        text = reply if isinstance(reply, str) else json.dumps(reply)
        return LLMResponse(text, self.count_tokens(request.prompt), 0, self.count_tokens(text))

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    @property
    def context_window(self) -> int:
        return 1 << 20

    def close(self) -> None:
        pass


def read_turn(request: LLMRequest) -> Turn:
    prompt = request.prompt
    match = re.search(r"\nInput: (.*)\n", prompt)
    assert match, prompt
    transcript = prompt[match.end():]
    reply = re.search(r"Reply (\d+) of (\d+)", transcript.splitlines()[-1])
    assert reply, prompt
    notes = re.findall(r"^Step \d+: .*?(?=^Step \d+: |^Reply \d+ of )", transcript, re.S | re.M)
    results = re.findall(r"^Result: (.*)$", transcript, re.M)
    return Turn(
        input=json.loads(match.group(1)),
        step=int(reply.group(1)),
        last=int(reply.group(2)),
        results=results,
        notes=[n.strip() for n in notes],
        schema=request.output.schema or {},
        prompt=prompt,
    )


def use_backend(con: Any, backend: Any) -> None:
    """Every model of the connection's session answers through `backend` from now on."""
    con.session.runtime = LLMRuntime(lambda model: backend)
