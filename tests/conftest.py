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
    """The served repository as users get it (DmfnService: Triton behind the nginx front door,
    supervised) on free ports. The periodic canary is off here: its requests would add to the
    inference counts that the batching tests read (the supervisor tests turn it on)."""
    from dmfn.serving.frontdoor import find_nginx
    from dmfn.serving.service import DmfnService, ServiceConfig
    from dmfn.serving.triton import free_ports

    front_door = find_nginx() is not None
    if not front_door:
        print("\nWARNING: nginx is missing: serving tests run without the front door")
    http, grpc, metrics = free_ports(3)
    service = DmfnService(
        ServiceConfig(
            exported_repository[0],
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            log_path=tmp_path_factory.mktemp("triton") / "server.log",
            canary_interval_s=None,
            front_door=front_door,
        )
    )
    service.start()
    try:
        yield service
    finally:
        service.shutdown()


@pytest.fixture
def needs_front_door() -> None:
    """Skip (with the reason) where nginx, the front door of `dmfn serve`, is not installed."""
    from dmfn.serving.frontdoor import find_nginx

    if find_nginx() is None:
        pytest.skip("nginx is not installed (make setup installs it as root): no front door")
