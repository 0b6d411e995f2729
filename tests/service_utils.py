"""Helpers for the tests of `dmfn serve`: service settings on free ports, certificates, a
running `dmfn serve` command, process and memory readings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from serving_utils import infer_inputs

from dmfn.contract import schema as S


def service_config(repository: Path, log_dir: Path | None = None, **kwargs):
    """A ServiceConfig on free ports; as root (CI) with ``allow_root``, since the tests run
    everything as root there (dmfn serve refuses root otherwise)."""
    from dmfn.serving.service import ServiceConfig
    from dmfn.serving.triton import free_ports

    for name, port in zip(("http_port", "grpc_port", "metrics_port"), free_ports(3), strict=True):
        kwargs.setdefault(name, port)
    kwargs.setdefault("allow_root", os.geteuid() == 0)
    return ServiceConfig(repository, log_dir=log_dir, **kwargs)


@contextlib.contextmanager
def serve_process(
    repository: Path, log_dir: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen, tuple[int, int, int]]]:
    """The ``dmfn serve`` command on ``repository``, on free (HTTP, gRPC, metrics) ports, with
    ``extra`` arguments (and ``--allow-root`` as root), its output in text pipes. Yields the
    process and its ports; on exit kills it if it still runs and closes its pipes."""
    from dmfn.serving.triton import free_ports

    ports = http, grpc, metrics = free_ports(3)
    command = [
        sys.executable, "-m", "dmfn.cli", "serve", "--repository", str(repository),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--log-dir", str(log_dir), *extra,
    ]  # fmt: skip
    if os.geteuid() == 0:
        command.append("--allow-root")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, ports
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def needs_nginx() -> None:
    from dmfn.serving.frontdoor import find_nginx

    if find_nginx() is None:
        pytest.skip("nginx is not installed (make setup installs it as root): no dmfn serve")


def as_nobody(code: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run Python ``code`` as the unprivileged user nobody (uid 65534) with Debian's
    /usr/bin/python3 (stdlib only: the project's interpreter lives under /root). Skips where
    this process cannot change user (not root) or setpriv / the system Python is missing."""
    if os.geteuid() != 0:
        pytest.skip("acting as another local user needs root (setpriv); CI runs as root")
    for tool in ("/usr/bin/setpriv", "/usr/bin/python3"):
        if not Path(tool).exists():
            pytest.skip(f"{tool} is missing: cannot act as another local user")
    return subprocess.run(
        ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "/usr/bin/python3", "-c", code],
        capture_output=True, text=True, timeout=timeout_s, cwd="/",
    )  # fmt: skip


class Load:
    """Threads sending good requests in a loop; records (send time, ok, message)."""

    def __init__(
        self, url: str, arrays: dict, n_threads: int = 4, headers: dict | None = None
    ) -> None:
        self.url, self.arrays, self.headers = url, arrays, headers
        self.results: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n_threads)]

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=120)
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    client.infer(
                        S.PIPELINE_MODEL,
                        infer_inputs(httpclient, self.arrays),
                        headers=self.headers,
                    )
                    self.results.append((sent, True, ""))
                except Exception as err:  # connection refused after a drain, 5xx, ...
                    self.results.append((sent, False, str(err)[:200]))
                    time.sleep(0.01)
        finally:
            client.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def answered_status(sock, timeout_s: float = 0.5) -> int | None:
    """The HTTP status a server already answered on a raw socket, None if it has not answered
    yet, -1 if the connection broke or the bytes are not an HTTP response."""
    sock.settimeout(timeout_s)
    try:
        data = sock.recv(64)
    except (TimeoutError, BlockingIOError):
        return None
    except OSError:
        return -1
    if not data.startswith(b"HTTP/1.1 "):
        return -1
    return int(data[9:12])
