"""Shared fixtures. Serving: a tiny trained checkpoint, its exported repository and a real Triton
server on free ports (session scope, always shut down). Big helpers live in serving_utils.py and
are imported inside the fixtures, so tests that do not use them never import torch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def audit_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every prediction appends an audit line (contract/audit.py); the tests' lines go to a
    temporary file instead of the user's ~/.local/state/dmfn (subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    before = os.environ.get("DMFN_AUDIT_LOG")
    os.environ["DMFN_AUDIT_LOG"] = str(path)
    yield path
    if before is None:
        os.environ.pop("DMFN_AUDIT_LOG", None)
    else:
        os.environ["DMFN_AUDIT_LOG"] = before


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
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed demo model (models/dmfn_demo.pt) exported with the default input limits:
    bodies up to 68 MiB, as a real deployment has (the tiny checkpoint's are 2 MiB)."""
    from dmfn.resources import demo_checkpoint
    from dmfn.serving.config import ServingSettings
    from dmfn.training.export import export

    out = tmp_path_factory.mktemp("demo_export") / "repo"
    export(demo_checkpoint(), out, ServingSettings(), parity_studies=2)
    return out


@pytest.fixture(scope="session")
def triton_server(exported_repository: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory):
    """The served repository as users get it (DmfnService: Triton behind the nginx front door,
    supervised) on free ports. The periodic canary is off here: its requests would add to the
    inference counts that the batching tests read (the supervisor tests turn it on)."""
    from service_utils import service_config

    from dmfn.serving.frontdoor import find_nginx
    from dmfn.serving.service import DmfnService

    if find_nginx() is None:
        pytest.skip("nginx is not installed (make setup installs it as root): no dmfn serve")
    service = DmfnService(
        service_config(
            exported_repository[0],
            tmp_path_factory.mktemp("triton_logs"),
            canary_interval_s=None,
            # the batching tests send 32 requests at once from this one address
            max_requests_per_client=64,
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


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A 3-patient ``tiny`` synthetic cohort (DICOM series, NIfTI masks, DICOM SEGs; seed 11)
    and its manifest's first row (paths relative to the folder). Read only: tests that change
    files copy them first."""
    import csv

    from dmfn.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(out, "tiny", seed=11, workers=1, n_patients=3)
    with (out / "manifest.csv").open() as handle:
        row = next(csv.DictReader(handle))
    return out, row
