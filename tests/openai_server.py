"""A real OpenAI-compatible server on loopback for the endpoint-teacher tests: `transformers serve` with a model
directory preloaded. It ignores `n` (one choice per request) and sampling seeds, which the client must survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class OpenAIServer:
    def __init__(self, model_dir: Path, port: int, log: Path) -> None:
        self.model_dir, self.port, self.log = model_dir, port, log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180) -> None:
        argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(argv, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"transformers serve did not answer within {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """Gone at once, as a crashed server or a lost node: no graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
