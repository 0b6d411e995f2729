"""Shared fixtures. Serving: a tiny trained checkpoint, its exported repository and a real Triton
server on free ports (session scope, always shut down). Big helpers live in serving_utils.py and
are imported inside the fixtures, so tests that do not use them never import torch."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DMFN (regnetx_tiny backbone) trained a few steps on synthetic studies."""
    from serving_utils import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def exported_repository(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """(repository path, parity numbers) of `dmfn export --target cpu` on the tiny checkpoint."""
    from serving_utils import export_repository

    return export_repository(tiny_checkpoint, tmp_path_factory.mktemp("export") / "repo")


@pytest.fixture(scope="session")
def triton_server(exported_repository: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory):
    """A real tritonserver serving the exported repository on free ports (TritonServer)."""
    from dmfn.serving.triton import TritonServer, free_ports

    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        exported_repository[0],
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp_path_factory.mktemp("triton") / "server.log",
    )
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        yield server
    finally:
        server.stop()
