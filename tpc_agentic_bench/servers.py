"""OpenAI-compatible servers for the `langgraph` system: a real vLLM api_server process, and a
small in-process stand-in backed by the sim backend (tests, `--backend sim`).

`VLLMServer` starts `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 with the engine
arguments halo's backend uses (block size, dtype, context, seed, KV-cache size, eager mode,
compact-JSON structured outputs), reporting cached prompt tokens (`--enable-prompt-tokens-details`)
and with the dev endpoints on (`POST /reset_prefix_cache` starts each system cold). `start()`
waits for `GET /health` within a timeout; `stop()` ends the whole process group and is safe to
call twice; use it as a context manager so the server stops on errors and Ctrl-C too.

    >>> with SimOpenAIServer(SimBackend()) as server:                # doctest: +SKIP
    ...     httpx.get(server.base_url + "/health").status_code
    200
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from halo_sql.llm.base import DecodingParams, LLMRequest, OutputSpec
from halo_sql.llm.sim import SimBackend

STARTUP_TIMEOUT_S = 300.0
"""How long a vLLM server may take to answer /health (about 35 s for the tiny model here)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """api_server command-line flags for engine keyword arguments (`vllm_compat.engine_kwargs`).

    >>> server_flags({"model": "/m", "block_size": 32, "enforce_eager": True,
    ...               "structured_outputs_config": {"backend": "xgrammar"}})
    ['--model', '/m', '--block-size', '32', '--enforce-eager', '--structured-outputs-config', '{"backend": "xgrammar"}']
    """
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


class VLLMServer:
    """A vLLM OpenAI-compatible api_server process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, engine_kwargs: Mapping[str, Any], served_name: str, *,
                 timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.engine_kwargs = dict(engine_kwargs)
        self.served_name = served_name
        self.timeout = timeout
        self.port = 0
        self.base_url = ""
        self.start_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            *server_flags(self.engine_kwargs),
            "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(port),
            "--enable-prompt-tokens-details",
        ]

    def start(self) -> VLLMServer:
        began = time.perf_counter()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env["VLLM_SERVER_DEV_MODE"] = "1"  # POST /reset_prefix_cache
        # Outlives this method (the server writes to it until stop(), which closes it).
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="vllm-server-", suffix=".log", delete=False
        )
        self._process = subprocess.Popen(
            self.command(self.port), stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: stop() ends the engine core too
        )
        # A backstop for an interpreter that exits without reaching stop() (stop() is idempotent).
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - began
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"vLLM server for {self.served_name} exited with {self._process.returncode} "
                    f"before it was ready:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(
            f"vLLM server for {self.served_name} not ready after {self.timeout:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        if self._log is None:
            return ""
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def reset_prefix_cache(self) -> None:
        httpx.post(self.base_url + "/reset_prefix_cache", timeout=30.0).raise_for_status()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _output_spec(body: Mapping[str, Any]) -> OutputSpec:
    structured = body.get("structured_outputs") or {}
    if "choice" in structured:
        labels = [str(x) for x in structured["choice"]]
        # halo's yes/no filter is a two-label choice on the wire; the sim answers by request,
        # kind included, so map it back to the same spec halo's filter uses.
        return OutputSpec.boolean() if labels == ["yes", "no"] else OutputSpec.choice(labels)
    if "json" in structured:
        schema = structured["json"]
        return OutputSpec.json(json.loads(schema) if isinstance(schema, str) else schema)
    return OutputSpec.text()


class _Listener(ThreadingHTTPServer):
    request_queue_size = 1024  # a whole batch connects at once; the default backlog is 5


class SimOpenAIServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 answering from a SimBackend: the same
    deterministic answers and token counts the sim gives halo, for the langgraph system without
    vLLM. Serves /health, /v1/completions, /v1/chat/completions (the user message is the prompt:
    the sim has no chat template) and /reset_prefix_cache."""

    def __init__(self, backend: SimBackend, served_name: str = "sim") -> None:
        self.backend = backend
        self.served_name = served_name
        self.requests = 0
        self.port = 0
        self.base_url = ""
        self.start_seconds = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _answer(self, body: Mapping[str, Any], chat: bool) -> dict[str, Any]:
        if chat:
            prompt = "".join(str(m.get("content", "")) for m in body.get("messages", ())
                             if m.get("role") == "user")
        else:
            prompt = str(body.get("prompt", ""))
        # langchain-openai sends the budget as max_completion_tokens, the openai client as
        # max_tokens; vLLM's server reads both.
        budget = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        request = LLMRequest(prompt, _output_spec(body), DecodingParams(max_tokens=int(budget)))
        response = self.backend.generate([request])[0]
        self.requests += 1
        if response.error is not None:
            raise ValueError(response.error)
        usage = {
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.output_tokens,
            "total_tokens": response.prompt_tokens + response.output_tokens,
            "prompt_tokens_details": {"cached_tokens": response.cached_prompt_tokens},
        }
        if chat:
            choice: dict[str, Any] = {
                "index": 0, "finish_reason": response.finish_reason,
                "message": {"role": "assistant", "content": response.text},
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "finish_reason": response.finish_reason, "text": response.text,
                      "logprobs": None}
            kind = "text_completion"
        return {"id": f"sim-{self.requests}", "object": kind, "created": int(time.time()),
                "model": self.served_name, "choices": [choice], "usage": usage}

    def start(self) -> SimOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # no access log on stderr
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/reset_prefix_cache":
                    server.backend.reset_cache()
                    self._send(200, {})
                elif self.path in ("/v1/completions", "/v1/chat/completions"):
                    try:
                        self._send(200, server._answer(body, chat="chat" in self.path))
                    except ValueError as exc:
                        self._send(400, {"error": {"message": str(exc), "type": "BadRequestError",
                                                   "code": 400}})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

        began = time.perf_counter()
        self._server = _Listener(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="sim-openai",
                                        daemon=True)
        self._thread.start()
        self.start_seconds = time.perf_counter() - began
        return self

    def reset_prefix_cache(self) -> None:
        httpx.post(self.base_url + "/reset_prefix_cache", timeout=30.0).raise_for_status()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> SimOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
