"""Compressed DICOM decode speed: pydicom's pixel-data plugins side by side, one CT slice.

Workload: one 512 x 512 CT-like slice (body ellipse, lungs, spine, noise of SD 12 HU; stored as
int16 raw = HU + 1024, as dmfn's writer stores it), encoded in each transfer syntax a hospital
archive uses:

- JPEG 2000 lossless and lossy (ratio 10), JPEG-LS lossless and near-lossless (error 2), RLE:
  encoded by pydicom (pylibjpeg-openjpeg, pyjpegls, pydicom's RLE encoder);
- JPEG Lossless SV1 (16 bit) and JPEG Extended (12 bit, lossy): encoded by dcmtk's ``dcmcjpeg``
  (skipped when it is missing);
- JPEG Baseline (8 bit, lossy) of the slice windowed to 0-255: ``dcmcjpeg +eb``. CT is not
  stored this way (8 bits cannot hold HU); the row is there because the syntax is in the list.

Each available plugin of each syntax (pydicom's ``get_decoder(syntax).available_plugins``:
``pylibjpeg`` = pylibjpeg-openjpeg / -libjpeg / -rle, ``gdcm`` = python-gdcm, ``pyjpegls``,
``pillow``, ``pydicom``) decodes the same encoded dataset; a row reports the best time of
``--repeats`` decodes of one slice (ms), the ratio to the fastest plugin of that syntax, whether
the result equals the other plugins' (lossless rows: equals the original), and the speed-up of
decoding 16 slices in ``os.cpu_count()`` threads over one thread (about the thread count when
the plugin releases the GIL while it decodes, about 1 when it does not).

Run: ``.venv/bin/python benchmarks/dicom_decode.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from _common import best_time
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dmfn.client.io import write_dicom_series

SIZE = 512
#: Slices decoded per thread-scaling measurement.
THREAD_SLICES = 16


def ct_slice(seed: int = 0) -> np.ndarray:
    """A 512 x 512 int16 HU slice that compresses like a chest CT slice (air, fat, muscle,
    lungs, bone, noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2
    hu = np.full((SIZE, SIZE), -1000.0)
    body = (x / 220) ** 2 + (y / 160) ** 2 < 1
    hu[body] = -90.0  # fat
    hu[(x / 205) ** 2 + (y / 145) ** 2 < 1] = 45.0  # muscle / mediastinum
    for side in (-1, 1):
        lung = ((x - side * 95) / 80) ** 2 + ((y + 5) / 110) ** 2 < 1
        hu[lung] = -850.0 + 40 * np.sin(x[lung] / 9) * np.cos(y[lung] / 7)
    hu[(x / 22) ** 2 + ((y - 110) / 22) ** 2 < 1] = 700.0  # vertebral body
    hu[(x / 18) ** 2 + ((y + 40) / 18) ** 2 < 1] = 180.0  # enhanced aorta
    hu += rng.normal(0, 12, hu.shape) * body
    return np.rint(hu).astype(np.int16)


def encoded_datasets(work: Path) -> dict[str, pydicom.Dataset]:
    """The slice in every syntax we can encode here, by row name."""
    hu = ct_slice()
    path = write_dicom_series(hu[None], (1.0, 0.7, 0.7), work / "raw", uid_entropy="bench")[0]
    raw = pydicom.dcmread(path)
    out: dict[str, pydicom.Dataset] = {"uncompressed (Explicit VR LE)": raw}

    def by_pydicom(name: str, syntax: UID, **kwargs: object) -> None:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, **kwargs)
        out[name] = pydicom.dcmread(_save(ds, work / f"{len(out)}.dcm"))

    by_pydicom("JPEG 2000 lossless", JPEG2000Lossless)
    by_pydicom("JPEG 2000 lossy (ratio 10)", JPEG2000, j2k_cr=[10])
    by_pydicom("JPEG-LS lossless", JPEGLSLossless)
    by_pydicom("JPEG-LS near-lossless (error 2)", JPEGLSNearLossless, jls_error=2)
    by_pydicom("RLE lossless", RLELossless)
    dcmcjpeg = shutil.which("dcmcjpeg")
    if dcmcjpeg is None:
        return out
    out["JPEG Lossless SV1 (dcmcjpeg)"] = _dcmtk(dcmcjpeg, ["+e1"], path, work / "sv1.dcm")
    twelve = pydicom.dcmread(path)  # raw = HU + 1024 in 0..4095: 12 bits, unsigned
    values = np.clip(twelve.pixel_array.astype(np.int32), 0, 4095).astype(np.uint16)
    twelve.BitsStored, twelve.HighBit, twelve.PixelRepresentation = 12, 11, 0
    twelve.PixelData = values.tobytes()
    out["JPEG Extended 12-bit lossy (dcmcjpeg)"] = _dcmtk(
        dcmcjpeg, ["+ee"], _save(twelve, work / "12bit.dcm"), work / "ext.dcm"
    )
    eight = pydicom.dcmread(path)
    window = np.clip((hu.astype(np.float32) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    eight.BitsAllocated, eight.BitsStored, eight.HighBit, eight.PixelRepresentation = 8, 8, 7, 0
    eight.PixelData = window.tobytes()
    out["JPEG Baseline 8-bit lossy (dcmcjpeg)"] = _dcmtk(
        dcmcjpeg, ["+eb"], _save(eight, work / "8bit.dcm"), work / "base.dcm"
    )
    return out


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _dcmtk(tool: str, options: list[str], source: Path, target: Path) -> pydicom.Dataset:
    subprocess.run([tool, *options, str(source), str(target)], check=True, capture_output=True)
    return pydicom.dcmread(target)


def decode(ds: pydicom.Dataset, plugin: str) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    array, _ = get_decoder(syntax).as_array(ds, decoding_plugin=plugin)
    return array


def thread_speedup(ds: pydicom.Dataset, plugin: str, threads: int) -> float:
    """Decode ``THREAD_SLICES`` copies of the slice in one thread and in ``threads`` threads:
    the ratio of the times (best of 3)."""

    def run(workers: int) -> float:
        best = float("inf")
        for _ in range(3):
            with ThreadPoolExecutor(workers) as pool:
                start = time.perf_counter()
                list(pool.map(lambda _: decode(ds, plugin), range(THREAD_SLICES)))
                best = min(best, time.perf_counter() - start)
        return best

    return run(1) / run(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        datasets = encoded_datasets(Path(tmp))
    original = ct_slice().astype(np.int64)
    print(f"{SIZE} x {SIZE} int16 CT slice, best of {args.repeats}; threads: {threads}")
    print(f"pydicom {pydicom.__version__}; " + ", ".join(_versions()))
    header = (
        f"{'transfer syntax':40} {'bytes':>8} {'plugin':10} {'ms/slice':>9} {'x fastest':>9} "
        f"{'max |err| HU':>12} {f'{threads} thr speed-up':>16}"
    )
    print(header)
    print("-" * len(header))
    for name, ds in datasets.items():
        syntax = ds.file_meta.TransferSyntaxUID
        plugins = (
            ["(numpy)"] if not syntax.is_compressed else list(get_decoder(syntax).available_plugins)
        )
        rows = []
        for plugin in plugins:
            if plugin == "(numpy)":

                def fn(ds: pydicom.Dataset = ds) -> np.ndarray:
                    return np.asarray(ds.pixel_array)

            else:

                def fn(ds: pydicom.Dataset = ds, plugin: str = plugin) -> np.ndarray:
                    return decode(ds, plugin)

            try:
                seconds, array = best_time(fn, args.repeats)
            except Exception as err:  # a plugin that cannot decode this variant
                rows.append((plugin, None, f"fails: {str(err).splitlines()[0][:60]}", None))
                continue
            error = _error(array, ds, original)
            speedup = 1.0 if plugin == "(numpy)" else thread_speedup(ds, plugin, threads)
            rows.append((plugin, seconds, error, speedup))
        fastest = min((r[1] for r in rows if r[1] is not None), default=None)
        size = len(ds.PixelData)
        for plugin, seconds, error, speedup in rows:
            if seconds is None or fastest is None:
                print(f"{name:40} {size:>8,} {plugin:10} {error}")
                continue
            print(
                f"{name:40} {size:>8,} {plugin:10} {seconds * 1e3:9.2f} "
                f"{seconds / fastest:9.2f} {error:>12} {speedup:16.2f}"
            )


def _error(array: np.ndarray, ds: pydicom.Dataset, original: np.ndarray) -> str:
    """Largest |decoded - original| in stored units (HU for the 16-bit rows)."""
    if int(ds.BitsAllocated) == 8:
        return "8-bit"
    values = array.astype(np.int64)
    if int(ds.PixelRepresentation) == 0:  # the 12-bit copy: raw = HU + 1024, clipped
        values = values - 1024
    else:
        values = values - 1024  # raw = HU + 1024 (RescaleIntercept -1024)
    reference = np.clip(original, -1024, 4095 - 1024)
    return f"{int(np.abs(values - reference).max())}"


def _versions() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in (
        "pylibjpeg",
        "pylibjpeg-openjpeg",
        "pylibjpeg-libjpeg",
        "pylibjpeg-rle",
        "python-gdcm",
        "pyjpegls",
        "pillow",
    ):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
