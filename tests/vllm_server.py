"""A real vLLM OpenAI-compatible server on 127.0.0.1, started and stopped by tests.

`python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does not work in this
environment) on the tiny random-weight model, in float32 (the random model needs it on CPU),
with cached-token details on and a one-line chat template (the tiny model has none). The server
runs in its own process group so `stop()` ends the engine process with it; its output goes to a
log file whose tail is shown when it fails to start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVED_NAME = "tiny"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
"""The user's words as they are: chat answers then equal completions answers on the tiny model."""


class VLLMServer:
    """One `vllm serve` process; `start()` waits until /v1/models answers."""

    def __init__(self, model_dir: Path, workdir: Path, *, startup_timeout: float = 240.0) -> None:
        self.model_dir = model_dir
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "vllm-server.log"
        (workdir / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--enforce-eager", "--block-size", "32", "--dtype", "float32",
            "--max-model-len", "2048", "--seed", "0",
            "--enable-prompt-tokens-details",
            "--chat-template", str(self.workdir / "chat_template.jinja"),
            # As the in-process backend: compact JSON, or a random model emits whitespace.
            "--structured-outputs-config",
            json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
            "--disable-uvicorn-access-log",
        ]

    def start(self) -> VLLMServer:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: stop() reaches the engine too
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"vLLM server exited while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"vLLM server not ready within {self.startup_timeout:.0f} s:\n{self.log_tail()}"
        )

    def ensure_running(self) -> VLLMServer:
        """Start it again if a fault test stopped it."""
        return self if self.running else self.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server and its engine (requests in flight are dropped).

        vLLM stops its engine first on SIGTERM, and uvicorn then waits for the connections of
        the requests in flight, which can no longer finish: after `grace` seconds the API
        process is killed, alone, so that its resource tracker still removes the shared memory
        the engine used; whatever is left of the group goes last.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.2)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)

    def answered(self) -> int:
        """Requests the server has finished so far (from its Prometheus /metrics)."""
        root = self.url.removesuffix("/v1")
        with urllib.request.urlopen(f"{root}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("vllm:request_success_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
