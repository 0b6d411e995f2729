"""From files on disk to a ``Prediction``: dmfn in-process and through ``dmfn serve``, against
MONAI's equivalent preprocessing pipeline on the same files, in one run (issue 25).

Studies, made on the fly in a temporary folder (or ``--keep DIR``, reused when present):
Z x 512 x 512 CT series (Z = 300 by default) at (1.25, 0.7, 0.7) mm written by
:func:`dmfn.client.io.write_dicom_series` (body ellipse of fat and soft tissue with noise, air
outside), one per lesion diameter (2, 5, 10 cm, a sphere of enhancing tissue, its mask as NIfTI),
uncompressed, and the same series re-encoded JPEG 2000 lossless (pydicom + pylibjpeg-openjpeg,
in this interpreter if it has them, else in the MONAI environment below; the row is skipped with
the reason when neither can encode).

Rows, each the median of ``--repeats`` calls with a warm page cache (one untimed call first):

- in-process: ``read_study_files`` + ``LocalPredictor.predict`` (models/dmfn_demo.pt);
- served: the same read + ``DmfnClient.predict`` against ``DmfnService`` (the demo model
  exported to a temporary repository, HTTP, as dmfn/demo.py starts it);
- each read both ways when the reader can read only the crop: the full volume, and
  ``read_study_files(..., crop_margin_mm=contract.roi_margin_mm)`` (detected with
  inspect.signature; without it, only the full read runs and the output says so);
- a manifest of ``--manifest`` studies (the 5 cm uncompressed study's files, listed again and
  again: a warm page cache, the decoding work of a real archive) through the server: a pool of
  ``--loaders`` loader threads reads studies while ``--concurrency`` requests are in flight (a
  thread pool of our own), and the same studies through ``dmfn predict --manifest``'s own loop
  (``dmfn.client.predict.run``: it reads the next chunk while the current one is predicted);
- MONAI 1.6 (``LoadImaged`` with PydicomReader / NibabelReader + ``EnsureChannelFirstd`` +
  ``Orientationd("RAS")`` + ``Spacingd(1 mm)`` + ``ScaleIntensityRanged`` + ``CropForegroundd``
  around the mask with the same 10 mm margin), in a virtual environment this script creates
  (``build/bench_monai_venv``: torch 2.13.0 CPU, monai, pydicom, nibabel, numpy<2), run as a
  subprocess that prints its timings as JSON. MONAI does no denoising and no network: its figure
  is a lower bound on a MONAI pipeline doing dmfn's work.

Where the time goes (one study, 5 cm, each stage the median of the repeats): header read
(``pydicom.dcmread(stop_before_pixels=True)`` of every file), decode (``pixel_array`` of every
file, and of only the slices the crop needs), mask read (nibabel), crop + request build
(``build_request``), preprocess / net / postprocess in-process, and through the server: the
server's own statistics (queue + compute per model) and the wire (round trip minus the request
build and the server's total).

    .venv/bin/python benchmarks/end_to_end.py [--quick] [--keep DIR] [--out FILE] [--no-monai]

``--quick``: 120 slices, the 5 cm lesion only, 3 repeats, a manifest of 10, no MONAI.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPACING_MM = (1.25, 0.7, 0.7)
PLANE = (512, 512)
LESION_HU = 70.0
CTC = {"ctc_level_pg_ml": 12.0}
MONAI_VENV = ROOT / "build" / "bench_monai_venv"
MONAI_PACKAGES = (
    "torch==2.13.0", "monai==1.6.1", "pydicom", "nibabel", "numpy<2", "pylibjpeg",
    "pylibjpeg-openjpeg",
)  # fmt: skip
#: Soft-tissue window of dmfn's defaults (WL 50 / WW 350) for MONAI's ScaleIntensityRanged.
WINDOW_HU = (50.0 - 175.0, 50.0 + 175.0)


# --------------------------------------------------------------------------- studies
def make_volume(slices: int, diameter_mm: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hu int16, mask uint8), (z, y, x): air outside a body ellipse (fat rim -100 HU, soft tissue
    40 HU, noise SD 15 HU), a lung-like region (-850 HU) on each side, and a spherical lesion of
    ``diameter_mm`` (70 HU) in the mediastinum, centred on the middle slice."""
    rng = np.random.default_rng(seed)
    ny, nx = PLANE
    y, x = np.ogrid[:ny, :nx]
    dy, dx = SPACING_MM[1], SPACING_MM[2]
    cy, cx = ny / 2, nx / 2
    body = ((y - cy) * dy / 160.0) ** 2 + ((x - cx) * dx / 170.0) ** 2
    lung = np.minimum(
        ((y - cy) * dy / 90.0) ** 2 + ((x - cx - 90 / dx) * dx / 55.0) ** 2,
        ((y - cy) * dy / 90.0) ** 2 + ((x - cx + 90 / dx) * dx / 55.0) ** 2,
    )
    plane = np.where(body <= 1.0, np.where(body > 0.85, -100.0, 40.0), -1000.0)
    plane = np.where(lung <= 1.0, -850.0, plane).astype(np.float32)
    hu = np.empty((slices, ny, nx), np.int16)
    mask = np.zeros((slices, ny, nx), np.uint8)
    zc, radius = (slices - 1) / 2, diameter_mm / 2
    lesion_yc = cy - 40 / dy  # anterior mediastinum
    for z in range(slices):
        noise = rng.normal(0.0, 15.0, PLANE).astype(np.float32)
        sl = plane + np.where(plane > -900, noise, noise * 0.2)
        r2 = ((z - zc) * SPACING_MM[0]) ** 2 + ((y - lesion_yc) * dy) ** 2 + ((x - cx) * dx) ** 2
        inside = r2 <= radius**2
        sl = np.where(inside, LESION_HU + noise, sl)
        hu[z] = np.clip(np.rint(sl), -1024, 3071)
        mask[z] = inside
    return hu, mask


def make_study(folder: Path, slices: int, diameter_mm: float) -> tuple[Path, Path]:
    """The DICOM folder and NIfTI mask of one study (reused when ``folder`` holds them)."""
    from dmfn.client.io.dicom_write import write_dicom_series
    from dmfn.client.io.nifti import write_nifti_mask

    image, mask_path = folder / "dicom", folder / "mask.nii.gz"
    if mask_path.is_file() and len(list(image.glob("*.dcm"))) == slices:
        return image, mask_path
    hu, mask = make_volume(slices, diameter_mm)
    write_dicom_series(hu, SPACING_MM, image, description="dmfn end-to-end benchmark")
    write_nifti_mask(mask, SPACING_MM, mask_path)
    return image, mask_path


_J2K_SCRIPT = r"""
import sys, pathlib, concurrent.futures as cf
import pydicom
from pydicom.uid import JPEG2000Lossless
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
def one(p):
    ds = pydicom.dcmread(p)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(dst / p.name, enforce_file_format=True)
with cf.ProcessPoolExecutor(2) as pool:
    list(pool.map(one, sorted(src.glob("*.dcm")), chunksize=8))
"""


def j2k_encoder() -> tuple[str | None, str]:
    """An interpreter that can encode JPEG 2000 lossless with pydicom, and why (or why not)."""
    check = "import pydicom, openjpeg; assert int(pydicom.__version__.split('.')[0]) >= 3"
    for python, where in ((sys.executable, "this interpreter"),
                          (str(MONAI_VENV / "bin" / "python"), "the MONAI environment")):  # fmt: skip
        if (
            Path(python).exists()
            and subprocess.run([python, "-c", check], capture_output=True).returncode == 0
        ):
            return python, f"pydicom + pylibjpeg-openjpeg in {where}"
    return None, "no JPEG 2000 encoder (pylibjpeg-openjpeg with pydicom >= 3) is installed"


def compress_j2k(python: str, src: Path, dst: Path) -> Path:
    if len(list(dst.glob("*.dcm"))) != len(list(src.glob("*.dcm"))):
        subprocess.run([python, "-c", _J2K_SCRIPT, str(src), str(dst)], check=True)
    return dst


# --------------------------------------------------------------------------- the MONAI peer
def ensure_monai_venv() -> tuple[Path | None, str]:
    """build/bench_monai_venv's interpreter (created on first use), or None and why not."""
    python = MONAI_VENV / "bin" / "python"
    check = "import monai, torch, pydicom, nibabel; print(monai.__version__, torch.__version__)"
    done = subprocess.run([str(python), "-c", check], capture_output=True, text=True) if python.exists() else None  # fmt: skip
    if done is None or done.returncode != 0:
        print(f"creating {MONAI_VENV} (pip: {' '.join(MONAI_PACKAGES)}) ...", flush=True)
        try:
            subprocess.run(["python3.11", "-m", "venv", str(MONAI_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *MONAI_PACKAGES],
                           check=True, capture_output=True, text=True)  # fmt: skip
        except (OSError, subprocess.CalledProcessError) as err:
            tail = getattr(err, "stderr", "") or str(err)
            return None, f"could not create the MONAI environment: {tail.strip()[-600:]}"
        done = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"MONAI environment unusable: {done.stderr.strip()[-600:]}"
    return python, f"monai {done.stdout.strip()} in {MONAI_VENV}"


_MONAI_SCRIPT = r"""
import json, os, statistics, sys, time
import torch
torch.set_num_threads(os.cpu_count() or 1)
from monai.transforms import (CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd,
                              ScaleIntensityRanged, Spacingd)
from monai.data import PydicomReader, NibabelReader
job = json.loads(sys.argv[1])
lo, hi = job["window_hu"]
stages = [
    ("load image (PydicomReader)", LoadImaged("image", reader=PydicomReader(), image_only=True)),
    ("load mask (NibabelReader)", LoadImaged("label", reader=NibabelReader(), image_only=True)),
    ("channel first", EnsureChannelFirstd(["image", "label"])),
    ("Orientationd RAS", Orientationd(["image", "label"], axcodes="RAS")),
    ("Spacingd 1 mm", Spacingd(["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest"))),
    ("ScaleIntensityRanged", ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)),
    ("CropForegroundd", CropForegroundd(["image", "label"], source_key="label", margin=job["margin_voxels"])),
]
out = []
for case in job["cases"]:
    runs = []
    for r in range(job["repeats"] + 1):  # the first call warms caches and is not kept
        d = {"image": case["image"], "label": case["mask"]}
        times = {}
        start = time.perf_counter()
        for name, t in stages:
            s = time.perf_counter(); d = t(d); times[name] = time.perf_counter() - s
        times["total"] = time.perf_counter() - start
        if r:
            runs.append(times)
    med = {k: statistics.median(t[k] for t in runs) for k in runs[0]}
    out.append({"case": case["name"], "seconds": med, "crop_shape": list(d["image"].shape)})
print("JSON" + json.dumps(out))
"""


def run_monai(python: Path, cases: list[dict], repeats: int, margin_mm: float) -> list[dict]:
    job = {
        "cases": cases,
        "repeats": repeats,
        "window_hu": WINDOW_HU,
        "margin_voxels": round(margin_mm),  # 1 mm voxels after Spacingd
    }
    done = subprocess.run([str(python), "-c", _MONAI_SCRIPT, json.dumps(job)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"MONAI subprocess failed: {done.stderr.strip()[-1500:]}")
    line = next(s for s in done.stdout.splitlines() if s.startswith("JSON"))
    return json.loads(line[4:])


# --------------------------------------------------------------------------- dmfn
def crop_read_supported() -> bool:
    from dmfn.client.study_files import read_study_files

    return "crop_margin_mm" in inspect.signature(read_study_files).parameters


def reader(image: Path, mask: Path, margin_mm: float | None) -> Callable[[], object]:
    from dmfn.client.study_files import read_study_files
    from dmfn.contract.study import Clinical

    extra = {} if margin_mm is None else {"crop_margin_mm": margin_mm}
    clinical = Clinical(60.0, "M", "anterior")
    return lambda: read_study_files(image, mask, CTC, clinical, image_id="bench", **extra)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one untimed call (warm page cache)."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def time_study(read: Callable[[], object], predict: Callable, repeats: int) -> dict:
    """Median read, predict and total (read + predict) seconds of ``repeats`` rounds."""
    rows = []
    for _ in range(repeats + 1):  # the first round warms the page cache and is not kept
        t0 = time.perf_counter()
        files = read()
        t1 = time.perf_counter()
        predict(files.study)
        t2 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t2 - t0))
    rows = rows[1:]
    return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(("read_s", "predict_s", "total_s"))}  # fmt: skip


def stage_breakdown(image: Path, mask: Path, local, repeats: int) -> dict[str, float]:
    """Client-side and in-process stages of one study, seconds (medians)."""
    import nibabel as nib
    import pydicom
    import torch

    from dmfn.contract.wire import build_request, crop_study
    from dmfn.preprocess import preprocess_request

    files = sorted(image.glob("*.dcm"))
    out: dict[str, float] = {}
    out["header read, every file"], _ = median_time(
        lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files], repeats
    )
    out["read + decode, every file"], _ = median_time(
        lambda: [pydicom.dcmread(f).pixel_array for f in files], repeats
    )
    out["mask read (nibabel)"], _ = median_time(lambda: np.asarray(nib.load(mask).dataobj), repeats)
    study = reader(image, mask, None)().study
    contract = local.contract
    hu, _ = crop_study(study, contract)
    needed = hu.shape[0]
    out[f"read + decode, the {needed} slices the crop needs (scaled)"] = out["read + decode, every file"] * needed / len(files)  # fmt: skip
    out["crop + request build"], request = median_time(
        lambda: build_request(study, contract), repeats
    )
    params = local.checkpoint.preprocess_params
    out["preprocess (in-process)"], pre = median_time(
        lambda: preprocess_request(request, params), repeats
    )
    (p,) = pre
    with torch.no_grad():
        out["net (in-process, torch)"], logits = median_time(
            lambda: local.model(torch.from_numpy(p.views[None]), torch.from_numpy(p.tabular[None])),
            repeats,
        )
    out["postprocess (in-process)"], _ = median_time(
        lambda: local._postprocess(logits.numpy(), p.measurements[None]), repeats
    )
    out["_crop_slices"] = needed
    out["_crop_shape"] = list(hu.shape)
    return out


def served_breakdown(client, study, url: str, repeats: int) -> dict[str, float]:
    """Round trip of one study and the server's statistics per model, ms per request."""
    from dmfn.contract import schema as S
    from dmfn.contract.wire import build_request
    from serving import _stats  # benchmarks/serving.py (this folder is first on sys.path)

    client.predict(study)
    before = _stats(url)
    rt, _ = median_time(lambda: client.predict(study), repeats)
    after = _stats(url)
    build, _ = median_time(lambda: build_request(study, client.contract), repeats)
    out = {"round trip (client.predict)": rt, "crop + request build": build}
    server = 0.0
    for name in (S.PREPROCESS_MODEL, S.NET_MODEL, S.POSTPROCESS_MODEL, S.PIPELINE_MODEL):
        d = {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]}
        n = max(d["success"], 1)
        if name == S.PIPELINE_MODEL:
            server = d["success_ns"] / n / 1e9
            out["server total (ensemble)"] = server
        else:
            out[f"server {name}: queue"] = d["queue_ns"] / n / 1e9
            out[f"server {name}: compute"] = d["compute_ns"] / n / 1e9
    out["wire + client (round trip - build - server)"] = rt - build - server
    return out


def manifest_run(
    read: Callable[[], object], client, n: int, loaders: int, concurrency: int
) -> dict:
    """``n`` studies: ``loaders`` threads read, ``concurrency`` predictions in flight; the wall
    time of all and the studies per second."""
    start = time.perf_counter()
    with (
        cf.ThreadPoolExecutor(loaders) as load_pool,
        cf.ThreadPoolExecutor(concurrency) as pred_pool,
    ):
        pending = []
        for fut in cf.as_completed([load_pool.submit(read) for _ in range(n)]):
            pending.append(pred_pool.submit(client.predict, fut.result().study))
        for p in pending:
            p.result()
    wall = time.perf_counter() - start
    return {"studies": n, "wall_s": wall, "studies_per_s": n / wall, "loaders": loaders,
            "concurrency": concurrency}  # fmt: skip


# --------------------------------------------------------------------------- main
def predict_run(image: Path, mask: Path, client, n: int, concurrency: int, work: Path) -> dict:
    """``n`` studies through ``dmfn predict --manifest``'s own loop
    (:func:`dmfn.client.predict.run`: the partial read, the next chunk read while this one is
    predicted, ``concurrency`` in flight), the CSV written; wall time of the whole run."""
    import contextlib
    import io

    from dmfn.client.predict import run

    manifest = work / "manifest_e2e.csv"
    lines = ["image_path,mask_path,ctc_level_pg_ml,age_years,sex,location,image_id"]
    lines += [f"{image},{mask},5.0,60,M,anterior,study{k}" for k in range(n)]
    manifest.write_text("\n".join(lines) + "\n")
    out = work / "predictions_e2e.csv"
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        status = run(client, manifest=manifest, concurrency=concurrency, out=out, overwrite=True)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"dmfn predict's run exited {status}")
    return {"studies": n, "wall_s": wall, "studies_per_s": n / wall, "loaders": "dmfn predict",
            "concurrency": concurrency, "read": "crop read"}  # fmt: skip


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", type=Path, help="folder for the studies (kept and reused)")
    ap.add_argument("--out", type=Path, help="JSON file of every figure")
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--manifest", type=int)
    ap.add_argument("--loaders", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args(argv)
    slices = 120 if args.quick else 300
    diameters = (50,) if args.quick else (20, 50, 100)
    repeats = args.repeats or (3 if args.quick else 5)
    n_manifest = args.manifest or (10 if args.quick else 50)
    use_monai = not (args.quick or args.no_monai)

    from dmfn.client.sdk import DmfnClient
    from dmfn.resources import demo_checkpoint
    from dmfn.serving.config import ServingSettings
    from dmfn.serving.service import DmfnService, ServiceConfig
    from dmfn.serving.triton import free_ports
    from dmfn.training.export import export
    from dmfn.training.inference import LocalPredictor

    report: dict = {"machine": machine(), "slices": slices, "spacing_mm": SPACING_MM,
                    "repeats": repeats, "notes": []}  # fmt: skip
    print(f"end-to-end benchmark, {report['machine']}")
    tmp = tempfile.TemporaryDirectory(prefix="dmfn_e2e_")
    work = args.keep or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    monai_python = None
    if use_monai:
        monai_python, why = ensure_monai_venv()
        print(f"MONAI: {why}")
        report["monai_env"] = why
    encoder, why = j2k_encoder()
    print(f"JPEG 2000: {why}")
    report["j2k_encoder"] = why

    cases: list[dict] = []
    t = time.perf_counter()
    for d in diameters:
        image, mask = make_study(work / f"ct{slices}_lesion{d}mm", slices, d)
        cases.append({"name": f"{d // 10} cm, uncompressed", "image": image, "mask": mask, "mm": d})
        if encoder is not None:
            j2k = compress_j2k(encoder, image, work / f"ct{slices}_lesion{d}mm" / "dicom_j2k")
            cases.append({"name": f"{d // 10} cm, JPEG 2000 lossless", "image": j2k, "mask": mask, "mm": d})  # fmt: skip
    print(f"studies ready in {work} ({time.perf_counter() - t:.0f} s)")
    for c in cases:
        size = sum(f.stat().st_size for f in c["image"].glob("*.dcm"))
        c["mb_on_disk"] = size / 1e6

    checkpoint = demo_checkpoint()
    local = LocalPredictor(checkpoint, audit=False)
    margin = local.contract.roi_margin_mm
    modes: list[tuple[str, float | None]] = [("full read", None)]
    if crop_read_supported():
        modes.append(("crop read", margin))
    else:
        note = ("read_study_files has no crop_margin_mm argument yet: full read only; rerun "
                "this script when the partial read lands")  # fmt: skip
        print(note)
        report["notes"].append(note)

    repository = work / "model_repository"
    t = time.perf_counter()
    export(checkpoint, repository, ServingSettings(), parity_studies=2, overwrite=True)
    print(f"exported the demo model to {repository} ({time.perf_counter() - t:.0f} s)")
    http, grpc, metrics = free_ports(3)
    config = ServiceConfig(repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                           log_dir=work / "logs", canary_interval_s=None,
                           allow_root=os.geteuid() == 0)  # fmt: skip
    rows: list[dict] = []

    def single(system: str, predict: Callable) -> None:
        for c in cases:
            # JPEG 2000 reads take seconds each: fewer repeats there (the median of 3)
            n = repeats if "JPEG" not in c["name"] else min(repeats, 3)
            for mode, m in modes:
                r = time_study(reader(c["image"], c["mask"], m), predict, n)
                rows.append({"case": c["name"], "mb_on_disk": c["mb_on_disk"], "read": mode,
                             "system": system, "repeats": n, **r})  # fmt: skip
                print(f"  {c['name']:<28} {mode:<10} {system:<11} read {r['read_s']:.3f} s "
                      f"predict {r['predict_s']:.3f} s total {r['total_s']:.3f} s", flush=True)  # fmt: skip

    single("in-process", local.predict)  # before the server starts: no idle server around
    report["single_study"] = rows
    with DmfnService(config) as server, DmfnClient(url=server.http_url, audit=False) as client:
        single("dmfn serve", client.predict)
        rows.sort(key=lambda r: ([c["name"] for c in cases].index(r["case"]), r["read"]))

        five = next(c for c in cases if c["mm"] == 50 and "uncompressed" in c["name"])
        stages = stage_breakdown(five["image"], five["mask"], local, repeats)
        study = reader(five["image"], five["mask"], None)().study
        stages_served = served_breakdown(client, study, server.http_url, repeats)
        report["stages_5cm"] = {"client_and_in_process": stages, "served": stages_served}
        for c in cases:
            if c["mm"] == 50 and "JPEG" in c["name"]:
                files = sorted(c["image"].glob("*.dcm"))
                import pydicom

                dec, _ = median_time(lambda f=files: [pydicom.dcmread(p).pixel_array for p in f], 1)
                report["stages_5cm"]["j2k read + decode, every file"] = dec

        manifests = []
        for mode, m in modes:
            r = manifest_run(reader(five["image"], five["mask"], m), client, n_manifest,
                             args.loaders, args.concurrency)  # fmt: skip
            r["read"] = mode
            manifests.append(r)
            print(f"  manifest of {n_manifest} ({mode}): {r['wall_s']:.1f} s, "
                  f"{r['studies_per_s']:.2f} studies/s", flush=True)  # fmt: skip
        if crop_read_supported():
            with DmfnClient(url=server.http_url, audit=False) as run_client:
                r = predict_run(five["image"], five["mask"], run_client, n_manifest,
                                args.concurrency, work)  # fmt: skip
            manifests.append(r)
            print(f"  manifest of {n_manifest} (dmfn predict's loop): {r['wall_s']:.1f} s, "
                  f"{r['studies_per_s']:.2f} studies/s", flush=True)  # fmt: skip
        report["manifest"] = manifests

    if monai_python is not None:
        t = time.perf_counter()
        monai_cases = [{"name": c["name"], "image": str(c["image"]), "mask": str(c["mask"])} for c in cases]  # fmt: skip
        try:
            report["monai"] = run_monai(monai_python, monai_cases, max(1, repeats // 2), margin)
            print(f"MONAI done ({time.perf_counter() - t:.0f} s)")
        except RuntimeError as err:
            print(err)
            report["notes"].append(str(err))
    print()
    print(format_report(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.out}")
    if args.keep is None:
        tmp.cleanup()
    return 0


def format_report(report: dict) -> str:
    lines = [f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"load {report['machine']['load_avg'][0]:.1f}, {report['machine']['date']}; "
             f"{report['slices']}x512x512 at {report['spacing_mm']} mm; median of "
             f"{report['repeats']}"]  # fmt: skip
    monai = {m["case"]: m["seconds"]["total"] for m in report.get("monai", [])}
    lines.append(f"{'study':<28} {'MB':>5} {'read':<10} {'system':<11} {'read s':>7} "
                 f"{'predict s':>9} {'total s':>8} {'MONAI s':>8} {'MONAI/us':>8}")  # fmt: skip
    for r in report["single_study"]:
        m = monai.get(r["case"])
        lines.append(
            f"{r['case']:<28} {r['mb_on_disk']:>5.0f} {r['read']:<10} {r['system']:<11} "
            f"{r['read_s']:>7.3f} {r['predict_s']:>9.3f} {r['total_s']:>8.3f} "
            + (f"{m:>8.2f} {m / r['total_s']:>8.1f}" if m else f"{'-':>8} {'-':>8}")
        )
    lines.append("\nwhere the time goes, 5 cm uncompressed study (seconds, medians):")
    st = report["stages_5cm"]
    for k, v in {**st["client_and_in_process"], **st["served"]}.items():
        if not k.startswith("_"):
            lines.append(f"  {k:<52} {v * 1e3:>9.1f} ms")
    if "j2k read + decode, every file" in st:
        lines.append(f"  {'JPEG 2000: read + decode, every file':<52} {st['j2k read + decode, every file'] * 1e3:>9.1f} ms")  # fmt: skip
    lines.append(f"  crop: {st['client_and_in_process']['_crop_shape']} voxels")
    for m in report.get("manifest", []):
        lines.append(f"manifest of {m['studies']} studies ({m['read']}, {m['loaders']} loader "
                     f"threads, {m['concurrency']} in flight): {m['wall_s']:.1f} s, "
                     f"{m['studies_per_s']:.2f} studies/s")  # fmt: skip
    for m in report.get("monai", []):
        stages = ", ".join(f"{k} {v:.2f}" for k, v in m["seconds"].items() if k != "total")
        lines.append(f"MONAI {m['case']}: {m['seconds']['total']:.2f} s ({stages}); crop {m['crop_shape']}")  # fmt: skip
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
