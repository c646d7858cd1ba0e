"""A small OpenAI-compatible server on 127.0.0.1 for tests of the `openai` backend.

It answers /v1/completions and /v1/chat/completions (honouring vLLM's `structured_outputs` and
the standard `response_format` unless told to reject it), /v1/models and /tokenize, records
every request, and misbehaves on cue: scripted HTTP errors with headers (429 + Retry-After),
slow answers, dropped connections, requests failing by prompt.

    >>> with FakeOpenAIServer() as server:                              # doctest: +SKIP
    ...     server.url
    'http://127.0.0.1:40123/v1'
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from halo_sql.llm.sim import _value_for_schema


@dataclass
class Reply:
    """One scripted answer to a completion request."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    """Close the connection without answering (a server going away mid-request)."""


@dataclass
class Seen:
    """One completion request as the server received it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float

    @property
    def prompt(self) -> str:
        if "messages" in self.body:
            return str(self.body["messages"][-1]["content"])
        return str(self.body.get("prompt", ""))


class FakeOpenAIServer:
    """See the module docstring. Attributes set the behaviour; change them between requests."""

    def __init__(
        self,
        *,
        served: str = "fake-model",
        owned_by: str = "fake",
        max_model_len: int | None = None,
        tokenize: bool = True,
        cached_tokens: bool = False,
        reject_response_format: bool = False,
    ) -> None:
        self.served = served
        self.owned_by = owned_by
        self.max_model_len = max_model_len
        self.tokenize = tokenize
        self.cached_tokens = cached_tokens
        self.reject_response_format = reject_response_format
        self.free_text = "ok"
        """The answer to unconstrained requests."""
        self.delay = 0.0
        """Seconds each completion takes."""
        self.script: list[Reply] = []
        """Replies handed out first, one per completion request, before normal answers."""
        self.fail: Callable[[Seen], Reply | None] = lambda seen: None
        """A reply for requests that should fail (by prompt, say), else None."""
        self.seen: list[Seen] = []
        self.tokenize_calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers --------------------------------------------------------------------------------

    def completion(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            return scripted
        failing = self.fail(seen)
        if failing is not None:
            return failing
        body = seen.body
        if self.reject_response_format and "response_format" in body:
            return Reply(400, {"error": {"message": "response_format is not supported",
                                         "type": "invalid_request_error", "code": 400}})
        if body.get("model") != self.served:
            return Reply(404, {"error": {"message": f"The model `{body.get('model')}` does not "
                                         "exist.", "type": "NotFoundError", "code": 404}})
        text = self._text(body)
        prompt_tokens = len(seen.prompt.split())
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max(1, len(text.split())),
            "total_tokens": prompt_tokens + max(1, len(text.split())),
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
        if "messages" in body:
            choice: dict[str, Any] = {
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": text},
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}
            kind = "text_completion"
        return Reply(200, {"id": "cmpl-1", "object": kind, "created": 0, "model": self.served,
                           "choices": [choice], "usage": usage})

    def _text(self, body: dict[str, Any]) -> str:
        structured = body.get("structured_outputs") or {}
        if "choice" in structured:
            return str(structured["choice"][0])
        if "json" in structured:
            return json.dumps(_value_for_schema(structured["json"], random.Random(0)))
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            return json.dumps(_value_for_schema(schema, random.Random(0)))
        return self.free_text

    def models(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.served, "object": "model", "owned_by": self.owned_by}
        if self.max_model_len is not None:
            entry["max_model_len"] = self.max_model_len
        return {"object": "list", "data": [entry]}


def _handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass  # quiet tests

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/v1/models":
                self._send(Reply(200, server.models()))
            else:
                self._send(Reply(404, {"error": {"message": "not found"}}))

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/tokenize":
                if not server.tokenize:
                    self._send(Reply(404, {"detail": "Not Found"}))
                    return
                server.tokenize_calls += 1
                tokens = list(range(len(str(body.get("prompt", "")).split()) + 1))
                self._send(Reply(200, {"count": len(tokens), "tokens": tokens,
                                       "max_model_len": server.max_model_len or 0}))
                return
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(Reply(404, {"error": {"message": "not found"}}))
                return
            seen = Seen(self.path, body, {k.lower(): v for k, v in self.headers.items()},
                        time.monotonic())
            with server._lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if server.delay:
                    time.sleep(server.delay)
                reply = server.completion(seen)
            finally:
                with server._lock:
                    server.in_flight -= 1
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            if reply.drop:
                self.close_connection = True
                return
            data = json.dumps(reply.body or {}).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
