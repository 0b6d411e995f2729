"""Compressed DICOM as archives store it: the same series written compressed (pydicom's encoders,
dcmtk's dcmcjpeg where installed) loads to the same HU and predicts the same (lossless), or
within a stated tolerance (lossy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

from dmfn.client.io import load_dicom_series
from dmfn.client.study_files import read_study_files
from dmfn.contract.study import Clinical

#: Largest change of a class probability from JPEG 2000 lossy at ratio 10 (measured 0.00013 on
#: the tiny cohort's first study with the demo model).
LOSSY_PROB_TOLERANCE = 0.02


def _compress(source: Path, target: Path, syntax: UID, **kwargs: object) -> Path:
    target.mkdir()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.compress(syntax, **kwargs)
        ds.save_as(target / path.name, enforce_file_format=True)
    return target


def _dcmcjpeg(source: Path, target: Path) -> Path:
    """JPEG Lossless SV1 (process 14), the usual lossless syntax of CT archives."""
    tool = shutil.which("dcmcjpeg")
    if tool is None:
        pytest.skip("dcmtk's dcmcjpeg is not installed")
    target.mkdir()
    for path in sorted(source.iterdir()):
        subprocess.run([tool, "+e1", str(path), str(target / path.name)], check=True)
    return target


def _predict(out: Path, row: dict[str, str], image: Path, margin: float | None) -> object:
    from dmfn.resources import demo_checkpoint
    from dmfn.training.inference import LocalPredictor

    files = read_study_files(
        image, out / row["mask_path"], {"ctc_level_pg_ml": float(row["ctc_level_pg_ml"])},
        Clinical(float(row["age_years"]), row["sex"], row["location"]), crop_margin_mm=margin,
    )  # fmt: skip
    return LocalPredictor(demo_checkpoint(), audit=False).predict(files.study)


@pytest.mark.parametrize("syntax", ["jpeg2000", "jpegls", "rle", "jpeg_lossless_sv1"])
def test_lossless_series_predicts_identically(
    tiny_cohort: tuple[Path, dict[str, str]], tmp_path: Path, syntax: str
) -> None:
    out, row = tiny_cohort
    plain = out / row["image_path"]
    syntaxes = {"jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless, "rle": RLELossless}
    if syntax == "jpeg_lossless_sv1":
        packed = _dcmcjpeg(plain, tmp_path / syntax)
    else:
        packed = _compress(plain, tmp_path / syntax, syntaxes[syntax])
    first = pydicom.dcmread(next(packed.iterdir()), stop_before_pixels=True)
    assert first.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(load_dicom_series(packed).hu, load_dicom_series(plain).hu)
    reference = _predict(out, row, plain, None)
    for margin in (None, 10.0):  # the partial read decodes compressed slices too
        got = _predict(out, row, packed, margin)
        assert got.probs == reference.probs and got.malignant_prob == reference.malignant_prob


def test_lossy_jpeg2000_predicts_within_tolerance(
    tiny_cohort: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    out, row = tiny_cohort
    plain = out / row["image_path"]
    packed = _compress(plain, tmp_path / "j2k_lossy", JPEG2000, j2k_cr=[10])
    a, b = load_dicom_series(plain).hu, load_dicom_series(packed).hu
    assert not np.array_equal(a, b)  # really lossy
    reference, got = _predict(out, row, plain, None), _predict(out, row, packed, 10.0)
    worst = max(abs(got.probs[name] - p) for name, p in reference.probs.items())
    assert worst <= LOSSY_PROB_TOLERANCE, worst
