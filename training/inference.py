"""In-process prediction from a checkpoint, with no server: the same request bytes, the same
preprocessing, the same postprocessing as the served model (``dmfn predict --checkpoint``).

:class:`LocalPredictor` has the interface of :class:`dmfn.client.sdk.DmfnClient` (``contract``,
``predict``, ``predict_many``, ``close``) and returns the same
:class:`~dmfn.client.sdk.Prediction` objects, equal to the server's within float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from dmfn.client.sdk import Prediction, parse_response
from dmfn.contract.management import load_management
from dmfn.contract.postprocess import Postprocessor
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Study
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request

from .checkpoint import load_checkpoint, provenance

#: What a local prediction reports as the model that answered.
MODEL_VERSION = "checkpoint"


class LocalPredictor:
    """Predicts with the checkpoint at ``path`` in this process (CPU); ``management`` is the
    policy file (None: dmfn's default, as ``dmfn export`` uses)."""

    def __init__(self, path: str | Path, management: str | Path | None = None) -> None:
        self.path = Path(path)
        self.checkpoint = load_checkpoint(self.path)
        self.model = self.checkpoint.build_model()
        policy = load_management(management)
        policy.check_covers(self.checkpoint.taxonomy.names)
        self._contract = ServerContract(
            self.checkpoint.preprocess_params.roi_margin_mm,
            tuple(self.checkpoint.ctc_features),
            tuple(self.checkpoint.taxonomy.names),
            None,
            provenance(self.checkpoint, self.path),
            policy,
        )
        self._postprocess = Postprocessor.of(
            self.checkpoint.taxonomy, self.checkpoint.temperature, policy
        )

    @property
    def contract(self) -> ServerContract:
        return self._contract

    def is_ready(self) -> bool:
        return True

    @torch.no_grad()
    def predict(self, study: Study) -> Prediction:
        """The served model's answer for ``study``, computed here (ValueError for a study the
        server would refuse as well)."""
        arrays = build_request(study, self._contract)
        (pre,) = preprocess_request(arrays, self.checkpoint.preprocess_params)
        logits = self.model(torch.from_numpy(pre.views[None]), torch.from_numpy(pre.tabular[None]))
        outputs = self._postprocess(logits.numpy(), pre.measurements[None])
        return parse_response(
            outputs, self._contract.class_names, MODEL_VERSION, study.image_id,
            self._contract.provenance, self._contract.management,
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
