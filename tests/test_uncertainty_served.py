"""The class sets and the OOD flag, served and in-process: the same fits (contract/uncertainty.py)
give the same CLASS_SET, BINARY_SET and OOD_FLAG for every study of a synthetic cohort the demo
model never saw; and what an export stores, a client reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmfn.contract.uncertainty import DEFAULT_COVERAGE, Uncertainty, fit_uncertainty
from dmfn.resources import demo_checkpoint

pytestmark = pytest.mark.slow


def test_the_export_stores_the_fits_of_the_checkpoints_calibration(demo_repository: Path) -> None:
    from dmfn.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(demo_checkpoint())
    assert ckpt.calibration is not None
    taxonomy = ckpt.taxonomy
    expected = fit_uncertainty(ckpt.calibration, taxonomy.names, taxonomy.malignant_mask)
    stored = Uncertainty.from_json(
        (demo_repository / "postprocess" / "uncertainty.json").read_text()
    )
    assert stored == expected and stored.conformal.coverage == DEFAULT_COVERAGE
    manifest = json.loads((demo_repository / "dmfn_manifest.json").read_text())
    assert manifest["uncertainty"] == json.loads(expected.to_json())
    assert "class sets: APS at 90% coverage" in (demo_repository / "MODEL_CARD.md").read_text()


def test_served_and_in_process_sets_and_flags_agree_on_an_unseen_cohort(
    demo_repository: Path, tmp_path: Path
) -> None:
    from service_utils import needs_nginx, service_config

    from dmfn.client.manifest import load_row_study, read_manifest
    from dmfn.client.sdk import DmfnClient
    from dmfn.serving.service import DmfnService
    from dmfn.synth import generate_cohort
    from dmfn.training.inference import LocalPredictor

    needs_nginx()
    manifest = generate_cohort(tmp_path / "unseen", "demo", seed=91, n_patients=8,
                               readers_per_group=0)  # fmt: skip
    local = LocalPredictor(demo_checkpoint(), audit=False)
    rows = read_manifest(manifest, local.checkpoint.taxonomy).rows
    studies = [load_row_study(row, local.contract.ctc_features) for row in rows]
    in_process = local.predict_many(studies)
    service = DmfnService(
        service_config(demo_repository, tmp_path / "logs", canary_interval_s=None)
    )
    with service, DmfnClient(service.http_url, audit=False) as client:
        served = client.predict_many(studies, concurrency=2)
    assert len(served) == len(in_process) == len(rows) >= 8
    for a, b in zip(in_process, served, strict=True):
        assert a.class_set and a.class_set == b.class_set, (a.class_set, b.class_set)
        assert a.binary_set and a.binary_set == b.binary_set
        assert a.ood_flag == b.ood_flag
        assert a.ood_score == pytest.approx(b.ood_score, abs=1e-4)
        assert a.coverage == b.coverage == DEFAULT_COVERAGE
        # a set is ranked like the probabilities, and holds the top class
        probs = np.array([a.probs[name] for name in a.class_set])
        assert a.class_set[0] == a.top3[0][0] and (np.diff(probs) <= 0).all()
