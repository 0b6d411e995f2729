"""In-process prediction from a checkpoint, with no server: the same request bytes, the same
preprocessing, the same postprocessing as the served model (``dmfn predict --checkpoint``).

:class:`LocalPredictor` has the interface of :class:`dmfn.client.sdk.DmfnClient` (``contract``,
``predict``, ``predict_many``, ``close``) and returns the same
:class:`~dmfn.client.sdk.Prediction` objects, equal to the server's within float rounding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch

from dmfn.client.sdk import (
    Prediction,
    audit_prediction,
    coverage_of,
    parse_response,
    resolve_audit,
)
from dmfn.contract.audit import AuditLog
from dmfn.contract.management import load_management
from dmfn.contract.postprocess import Postprocessor
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Study
from dmfn.contract.uncertainty import DEFAULT_COVERAGE, DEFAULT_FALSE_ALARM
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request

from .checkpoint import load_checkpoint, provenance

#: What a local prediction reports as the model that answered.
MODEL_VERSION = "checkpoint"


class LocalPredictor:
    """Predicts with the checkpoint at ``path`` in this process (CPU); ``management`` is the
    policy file (None: dmfn's default, as ``dmfn export`` uses); ``audit`` as for
    :class:`~dmfn.client.sdk.DmfnClient` (one line per study, ``source`` ``local``). The class
    sets and the OOD flag are fitted from the checkpoint's calibration data at ``coverage``,
    ``conformal`` method and ``ood_false_alarm``, the defaults of ``dmfn export``, so both paths
    give the same sets; a checkpoint without calibration data gives empty sets, never a flag."""

    def __init__(
        self,
        path: str | Path,
        management: str | Path | None = None,
        audit: AuditLog | Literal[False] | None = None,
        *,
        coverage: float = DEFAULT_COVERAGE,
        conformal: str = "aps",
        ood_false_alarm: float = DEFAULT_FALSE_ALARM,
    ) -> None:
        self.audit = resolve_audit(audit)
        self.path = Path(path)
        self.checkpoint = load_checkpoint(self.path)
        self.model = self.checkpoint.build_model()
        policy = load_management(management)
        policy.check_covers(self.checkpoint.taxonomy.names)
        taxonomy = self.checkpoint.taxonomy
        uncertainty = self.checkpoint.uncertainty(coverage, conformal, ood_false_alarm)
        self._contract = ServerContract(
            self.checkpoint.preprocess_params.roi_margin_mm,
            tuple(self.checkpoint.ctc_features),
            tuple(taxonomy.names),
            None,
            provenance(self.checkpoint, self.path),
            policy,
            uncertainty,
        )
        self._postprocess = Postprocessor.of(
            taxonomy, self.checkpoint.temperature, policy, uncertainty
        )

    @property
    def contract(self) -> ServerContract:
        return self._contract

    def is_ready(self) -> bool:
        return True

    def predict(self, study: Study) -> Prediction:
        """The served model's answer for ``study``, computed here (ValueError for a study the
        server would refuse as well); its audit line is written whatever the outcome."""
        started = time.perf_counter()
        sha256 = self._contract.provenance.sha256
        try:
            prediction = self._predict(study)
        except Exception as err:
            audit_prediction(self.audit, "local", study, started, sha256, error=err)
            raise
        audit_prediction(self.audit, "local", study, started, sha256, prediction)
        return prediction

    @torch.no_grad()
    def _predict(self, study: Study) -> Prediction:
        arrays = build_request(study, self._contract)
        (pre,) = preprocess_request(arrays, self.checkpoint.preprocess_params)
        logits = self.model(torch.from_numpy(pre.views[None]), torch.from_numpy(pre.tabular[None]))
        outputs = self._postprocess(logits.numpy(), pre.measurements[None])
        return parse_response(
            outputs, self._contract.class_names, MODEL_VERSION, study.image_id,
            self._contract.provenance, self._contract.management, coverage_of(self._contract),
        )  # fmt: skip

    def predict_many(
        self, studies: Iterable[Study], concurrency: int = 1, return_exceptions: bool = False
    ) -> list[Prediction | Exception]:
        """:meth:`predict` of each study in order (``concurrency`` is accepted for the client's
        interface; torch uses the cores itself)."""
        out: list[Prediction | Exception] = []
        for study in studies:
            try:
                out.append(self.predict(study))
            except ValueError as err:
                if not return_exceptions:
                    raise
                out.append(err)
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MODEL_VERSION", "LocalPredictor"]
