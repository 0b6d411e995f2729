"""``dmfn predict --checkpoint C --explain DIR``: the Grad-CAM heat maps of each prediction
(:mod:`dmfn.training.explain`), and for labelled studies (a manifest with ``label``) a gallery
of the most confident right, the most confident wrong and the most uncertain ones.

In-process only: the maps need gradients through the net, and the server runs it in ONNX
Runtime or TensorRT without them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dmfn.client.predict import StudySource
from dmfn.client.reports import safe_name
from dmfn.client.sdk import Prediction
from dmfn.client.study_files import StudyFiles
from dmfn.contract.errors import InvalidInput


def check_explain_folder(folder: Path, overwrite: bool) -> None:
    """Refuse (InvalidInput naming ``explain``) a folder that holds files, unless ``overwrite``:
    earlier maps are results too."""
    if folder.exists() and not folder.is_dir():
        raise InvalidInput("explain", f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InvalidInput(
            "explain", f"{folder} holds files; pass {{overwrite}} to write into it",
            mentions={"overwrite": "--overwrite"},
        )  # fmt: skip


class HeatMaps:
    """The ``explain`` output of :func:`dmfn.client.predict.run` for an in-process predictor:
    ``<image id>_views.png`` and ``<image id>_cam.npy`` per study in ``folder``, and
    ``gallery.png`` / ``gallery.md`` of the labelled ones at the end."""

    def __init__(self, predictor: object, folder: Path, gallery_size: int = 3) -> None:
        from dmfn.training.explain import Explainer, GalleryPicker

        self.folder = folder
        self.explainer = Explainer(predictor)
        self.gallery = GalleryPicker(gallery_size)
        self.written = 0

    def make(self, source: StudySource, files: StudyFiles, prediction: Prediction) -> None:
        from dmfn.training.explain import write_explanation

        explanation = self.explainer.explain(files.study)
        name = safe_name(source.image_id or prediction.image_id or source.image_path.name)
        write_explanation(explanation, self.folder, name)
        self.gallery.add(explanation)
        self.written += 1

    def finish(self) -> None:
        where = f"{self.written} heat map(s) in {self.folder}"
        if self.gallery.seen:
            png, _ = self.gallery.write(self.folder)
            where += f", gallery {png}"
        print(f"dmfn predict: wrote {where}", file=sys.stderr)
