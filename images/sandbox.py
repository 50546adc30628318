"""A throw-away Docker engine and image registry on 127.0.0.1, for the container tests and benches.

dockerd runs sandbox-style under one temp folder (data, exec root, socket, pid file) without iptables
or a bridge, so it leaves nothing behind; `docker-registry serve` stores blobs in the same folder.
Both are stopped by the PIDs this module started, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_TOOLS = ("dockerd", "docker", "docker-registry", "mmdebstrap")


def missing_tools() -> list[str]:
    return [t for t in SYSTEM_TOOLS if shutil.which(t) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s; log {log}:\n{log.read_text()[-3000:]}")


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this child when its parent dies (a killed test run leaves no engine)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Sandbox:
    """dockerd + registry under `root`; `env` is what a docker client needs (DOCKER_HOST)."""

    root: Path
    registry_port: int = 0
    dockerd: subprocess.Popen | None = None
    registry: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)
    die_with_parent: bool = True

    @property
    def registry_host(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def _preexec(self):
        return _die_with_parent if self.die_with_parent else None

    def start(self) -> "Sandbox":
        self.root.mkdir(parents=True, exist_ok=True)
        # A unix socket path must stay under ~100 bytes.
        if len(str(self.socket)) > 100:
            raise RuntimeError(f"sandbox folder path too long for a unix socket: {self.root}")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                    "DOCKER_CONFIG": str(self.root / "client")}
        (self.root / "client").mkdir(exist_ok=True)
        log = self.root / "dockerd.log"
        with open(log, "wb") as f:
            self.dockerd = subprocess.Popen(
                ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "--pidfile", str(self.root / "dockerd.pid"), "-H", f"unix://{self.socket}",
                 "--storage-driver=overlay2", "--iptables=false", "--bridge=none"],
                stdout=f, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self._preexec)

        def engine_ready() -> bool:
            return subprocess.run(["docker", "version"], env=self.env, capture_output=True).returncode == 0

        _wait(engine_ready, "dockerd", 60, self.dockerd, log)

        self.registry_port = self.registry_port or free_port()
        cfg = self.root / "registry.yml"
        cfg.write_text("version: 0.1\nlog: {level: warn}\n"
                       f"storage: {{filesystem: {{rootdirectory: {self.root / 'registry'}}}, delete: {{enabled: true}}}}\n"
                       f"http: {{addr: {self.registry_host}}}\n")
        rlog = self.root / "registry.log"
        with open(rlog, "wb") as f:
            self.registry = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=f,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=self._preexec)

        def registry_ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://{self.registry_host}/v2/", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        _wait(registry_ready, "docker-registry", 30, self.registry, rlog)
        return self

    def stop(self) -> None:
        """Stop what start() started, by PID: containers go with the engine."""
        if self.dockerd is not None and self.dockerd.poll() is None:
            ids = subprocess.run(["docker", "ps", "-q"], env=self.env, capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], env=self.env, capture_output=True)
        _stop(self.registry)
        _stop(self.dockerd, timeout=30)

    def remove(self) -> None:
        """Delete the sandbox folder (after stop). `rm --one-file-system` never follows into a mount
        left behind, and is much faster than Python on the engine's many small layer files."""
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], capture_output=True)

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
