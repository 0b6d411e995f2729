"""From manifest rows to training tensors, through the serving preprocessing and a disk cache.

Each image is loaded as the client loads it (:func:`dmfn.client.manifest.load_row_study`: DICOM
series folder, NIfTI or NRRD file, mask on the image's grid), turned into the very request the
client would send (:func:`dmfn.contract.wire.build_request`: the crop with the model's ROI margin,
HU rounded to int16) and preprocessed from those bytes by
:func:`dmfn.preprocess.preprocess_request`, the server's own path, with the given
:class:`~dmfn.contract.params.PreprocessParams`: training sees what the server sees. The result
(VIEWS fp32[3, S, S], TABULAR fp32[K + 5], MEASUREMENTS fp32[5]) is stored as one ``.npz`` per
image in the cache folder.

Cache key: SHA-256 over the parameter digest, the dmfn version, the image's CTC and clinical
values, and for every input file (each file of a DICOM folder, the mask file) its absolute path,
size in bytes and modification time in ns. Any edit, copy or move of an input file therefore
misses the cache (safe); file contents are not hashed (fast on large cohorts). Entries are written
atomically, so concurrent or interrupted builds never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dmfn import __version__
from dmfn.client.manifest import Manifest, ManifestRow, load_row_study
from dmfn.contract.params import PreprocessParams
from dmfn.contract.server import ServerContract
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request

log = logging.getLogger(__name__)

CACHE_FORMAT = "dmfn-cache/2"  # 2: preprocessed from the wire request (int16 HU)
#: Arrays stored in each cache entry (the three outputs of preprocess_study).
CACHE_ARRAYS: tuple[str, ...] = ("views", "tabular", "measurements")


def _input_files(row: ManifestRow) -> list[Path]:
    image = row.image_path
    files = sorted(p for p in image.rglob("*") if p.is_file()) if image.is_dir() else [image]
    return [*files, row.mask_path]


def cache_key(row: ManifestRow, params: PreprocessParams) -> str:
    """Hex SHA-256 identifying the preprocessed result of ``row`` under ``params``.

    Inputs hashed: params digest, dmfn version, CTC and clinical values, and the path, size and
    mtime (ns) of every input file (not the file contents).
    """
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, __version__, params.digest()):
        h.update(part.encode() + b"\0")
    h.update(np.asarray(row.ctc, dtype=np.float32).tobytes())
    h.update(row.clinical.as_array().tobytes())
    for path in _input_files(row):
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\0".encode())
    return h.hexdigest()


def preprocess_row(
    row: ManifestRow, params: PreprocessParams, ctc_features: Sequence[str]
) -> dict[str, np.ndarray]:
    """Run the serving path on one manifest row (its wire request through the server's
    preprocessing); arrays named as :data:`CACHE_ARRAYS`."""
    study = load_row_study(row, ctc_features)
    # The class names play no part in the request; any non-empty list makes a valid contract.
    contract = ServerContract(params.roi_margin_mm, tuple(ctc_features), ("class",))
    (result,) = preprocess_request(build_request(study, contract), params)
    return {
        "views": np.asarray(result.views, dtype=np.float32),
        "tabular": np.asarray(result.tabular, dtype=np.float32),
        "measurements": np.asarray(result.measurements, dtype=np.float32),
    }


def _build_entry(
    row: ManifestRow, params: PreprocessParams, ctc_features: Sequence[str], target: Path
) -> Path:
    """Preprocess ``row`` into the cache file ``target`` (atomic write). Runs in a worker."""
    try:
        arrays = preprocess_row(row, params, ctc_features)
    except (ValueError, OSError) as err:
        raise ValueError(f"line {row.line} (image {row.image_id!r}): {err}") from err
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(target)
    return target


def build_cache(
    manifest: Manifest,
    params: PreprocessParams,
    cache_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Make sure every image of ``manifest`` is preprocessed in ``cache_dir``.

    Missing entries are built in a pool of ``workers`` processes (``workers <= 1``: in this
    process) with a tqdm bar. Returns the cache file of each row, in manifest order. A failing
    image raises ValueError naming the manifest, line and image.
    """
    if workers < 0:
        raise ValueError(f"argument 'workers': must be >= 0, got {workers}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    targets = [cache_dir / f"{cache_key(row, params)}.npz" for row in manifest.rows]
    todo = [(row, t) for row, t in zip(manifest.rows, targets, strict=True) if not t.is_file()]
    log.info(
        "preprocessing cache %s: %d of %d images cached, %d to build",
        cache_dir,
        len(targets) - len(todo),
        len(targets),
        len(todo),
    )
    if not todo:
        return targets
    bar = tqdm(total=len(todo), desc="preprocess", unit="img", disable=not progress)
    try:
        if workers <= 1:
            for row, target in todo:
                _build_entry(row, params, manifest.ctc_features, target)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_build_entry, row, params, manifest.ctc_features, t)
                    for row, t in todo
                ]
                try:
                    for future in futures:
                        future.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # do not preprocess the rest first
                    raise
    except ValueError as err:
        raise ValueError(f"manifest {manifest.path} {err}") from err
    finally:
        bar.close()
    return targets


@dataclass
class CohortTensors:
    """The preprocessed images of one split, stacked; rows in manifest order.

    ``views`` fp32 [N, 3, S, S] (axial, coronal, sagittal; windowed to [0, 1]), ``tabular``
    fp32 [N, K + 5] (CTC features then CLINICAL fields, not standardised), ``measurements``
    fp32 [N, 5] (mm units), ``labels`` int64 [N] (taxonomy index), ``patient_index`` int64 [N]
    (index into ``patient_ids``).
    """

    views: torch.Tensor
    tabular: torch.Tensor
    measurements: torch.Tensor
    labels: torch.Tensor
    patient_index: torch.Tensor
    patient_ids: list[str]
    image_ids: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def patient_labels(self) -> torch.Tensor:
        """int64 [P]: the label of each patient (all images of a patient share it)."""
        out = torch.empty(self.n_patients, dtype=torch.int64)
        out[self.patient_index] = self.labels
        return out


def load_tensors(rows: Sequence[ManifestRow], cache_files: Sequence[Path]) -> CohortTensors:
    """Stack the cache entries ``cache_files`` of ``rows`` (same order) into a CohortTensors."""
    if len(rows) != len(cache_files):
        raise ValueError(
            f"argument 'cache_files': needs one file per row ({len(rows)}), got {len(cache_files)}"
        )
    if not rows:
        raise ValueError("argument 'rows': is empty (no images in this split)")
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in CACHE_ARRAYS}
    for row, path in zip(rows, cache_files, strict=True):
        with np.load(path) as entry:
            for name in CACHE_ARRAYS:
                if name not in entry:
                    raise ValueError(f"cache entry {path} of image {row.image_id!r} lacks {name!r}")
                arrays[name].append(entry[name])
    patient_ids = list(dict.fromkeys(r.patient_id for r in rows))
    position = {p: i for i, p in enumerate(patient_ids)}
    return CohortTensors(
        views=torch.from_numpy(np.stack(arrays["views"])),
        tabular=torch.from_numpy(np.stack(arrays["tabular"])),
        measurements=torch.from_numpy(np.stack(arrays["measurements"])),
        labels=torch.tensor([r.label_index for r in rows], dtype=torch.int64),
        patient_index=torch.tensor([position[r.patient_id] for r in rows], dtype=torch.int64),
        patient_ids=patient_ids,
        image_ids=[r.image_id for r in rows],
    )


def load_split(manifest: Manifest, split: str, cache_files: Sequence[Path]) -> CohortTensors | None:
    """The tensors of ``split`` (``cache_files`` aligned with ``manifest.rows``); None if empty."""
    chosen = [(r, f) for r, f in zip(manifest.rows, cache_files, strict=True) if r.split == split]
    if not chosen:
        return None
    rows, files = zip(*chosen, strict=True)
    return load_tensors(rows, files)


def patient_mean(
    values: torch.Tensor, patient_index: torch.Tensor, n_patients: int
) -> torch.Tensor:
    """Mean of the image rows ``values`` [N, C] over each patient's images -> [P, C].

    This is how a patient-level probability is formed from image-level probabilities.
    """
    if values.ndim != 2 or patient_index.shape != values.shape[:1]:
        raise ValueError(
            f"argument 'values': must be [N, C] with N = len(patient_index) "
            f"({patient_index.numel()}), got {tuple(values.shape)}"
        )
    sums = torch.zeros(n_patients, values.shape[1], dtype=values.dtype)
    sums.index_add_(0, patient_index, values)
    counts = torch.bincount(patient_index, minlength=n_patients).to(values.dtype)
    if (counts == 0).any():
        raise ValueError("argument 'patient_index': every patient needs at least one image")
    return sums / counts[:, None]
