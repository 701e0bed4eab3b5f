"""A real `pnndeploy chip serve` process on loopback for tests: started on a free port, stopped by itself.

Every server binds 127.0.0.1, stops after ``idle`` seconds without a request or ``max_requests``
requests, and is terminated (then killed) when the test leaves the ``with`` block.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Seconds to wait for a server to start listening (importing FastAPI and numpy takes ~1-2 s).
START_TIMEOUT = 60.0


class ChipServer:
    """``with ChipServer(profile, folder) as server:`` gives ``server.url`` and ``server.token_file``."""

    def __init__(self, profile: Path, folder: Path, *extra: str, idle: float = 120.0,
                 max_requests: int = 20000) -> None:
        self.profile, self.folder, self.extra = Path(profile), Path(folder), extra
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{self.profile.stem}-{os.getpid()}-{time.monotonic_ns()}"
        self.port_file = self.folder / f"{stem}.port"
        self.token_file = self.folder / f"{stem}.token"
        self.log = self.folder / f"{stem}.log"
        self.idle, self.max_requests = idle, max_requests
        self.process: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "ChipServer":
        command = [sys.executable, "-m", "pnndeploy", "chip", "serve", str(self.profile), "--host", "127.0.0.1",
                   "--port", "0", "--port-file", str(self.port_file), "--token-file", str(self.token_file),
                   "--latency-ms", "0", "--idle-timeout", str(self.idle), "--max-requests", str(self.max_requests),
                   *self.extra]
        self._log = open(self.log, "wb")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._log,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chip server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.url = f"{'https' if '--tls-cert' in self.extra else 'http'}://127.0.0.1:{self.port}"
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if not self._log.closed:
            self._log.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_logged(self, path: str) -> int:
        """How many requests to ``path`` (e.g. '/v1/infer') the server has logged so far."""
        return sum(f" {path} " in line for line in self.log.read_text().splitlines())
