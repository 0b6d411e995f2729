"""``dmfn predict``: send studies to a running dmfn Triton server and print the predictions.

One study::

    dmfn predict CT.nii.gz --mask lesion.nii.gz --ctc 12.5 --age 54 --sex F --location anterior
    dmfn predict dicom_folder/ --mask seg.seg.nrrd --segment lesion --ctc 12.5 ...
    dmfn predict dicom_folder/ --series-uid 1.2.826... --mask lesion.nii.gz ...

Many studies (a CSV with ``image_path``, ``mask_path``, optional ``segment``, ``series_uid`` and
``image_id``, one column per CTC feature of the model, ``age_years``, ``sex``, ``location``; other
columns such as those of a ``dmfn synth`` manifest are ignored; relative paths are relative to the
CSV)::

    dmfn predict --manifest studies.csv --concurrency 4 --json

Only the lesion box plus the model's ROI margin is sent (see :mod:`dmfn.client.sdk`). No torch.

Errors name what the user wrote: a reader's error about one of its arguments
(:class:`~dmfn.client.io.errors.ArgumentError`) is shown under the option or manifest column
that gave it (:data:`INPUT_NAMES`); an error about a file's content names the file; a manifest
row's errors start with ``manifest PATH line N``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmfn.client.io.errors import ArgumentError, one_line
from dmfn.client.manifest import read_manifest
from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import check_new
from dmfn.contract.predictions import PredictionRow, Provenance, write_predictions
from dmfn.contract.study import Clinical, Study

from .progress import Progress
from .sdk import DEFAULT_TIMEOUT_S, PROTOCOLS, DmfnServerError, Prediction

log = logging.getLogger("dmfn.predict")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Studies loaded from disk at a time per request in flight (bounds memory for big manifests).
LOAD_AHEAD = 2
#: How the user names each reader argument: (input, reader argument) -> (command-line option,
#: manifest column). "image" is :func:`~dmfn.client.io.load_image`, "mask"
#: :func:`~dmfn.client.io.load_mask`; an ArgumentError about another argument keeps its wording.
INPUT_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("image", "path"): ("IMAGE", "image_path"),
    ("image", "folder"): ("IMAGE", "image_path"),
    ("image", "series_uid"): ("--series-uid", "series_uid"),
    ("mask", "path"): ("--mask", "mask_path"),
    ("mask", "segment"): ("--segment", "segment"),
}
#: API argument -> flag, for the errors about the predictions file (--out).
OUT_FLAGS = {"out": "--out", "overwrite": "--overwrite"}


@dataclass(frozen=True)
class StudySource:
    """Where one study comes from: image (DICOM folder / NIfTI / NRRD), mask, non-image data.

    ``where`` is empty for the command line, else the manifest row (``manifest PATH line N``).
    """

    image_path: Path
    mask_path: Path
    segment: str | None
    ctc: tuple[str, ...]  # "VALUE" or "NAME=VALUE"
    age_years: str
    sex: str
    location: str
    image_id: str = ""
    where: str = ""
    series_uid: str | None = None
    patient_id: str = ""
    split: str = ""
    label: str = ""

    def explain(self, err: ValueError, step: str) -> ValueError:
        """``err``, raised while reading ``step`` ("image" or "mask"), in the user's terms.

        An :class:`ArgumentError` is shown under the option or column that gave the argument
        (:data:`INPUT_NAMES`); any other error already names its file and is kept as it is.
        Both are prefixed with the manifest row, if any.
        """
        if isinstance(err, ArgumentError) and (step, err.argument) in INPUT_NAMES:
            option, column = INPUT_NAMES[step, err.argument]
            return ValueError(_about(self.where, option, column, err.detail))
        return ValueError(_located(self.where, str(err)))


def _located(where: str, text: str) -> str:
    """``text`` prefixed with the manifest row ``where`` ("": the command line, unchanged)."""
    return f"{where}: {text}" if where else text


def _about(where: str, option: str, column: str, text: str) -> str:
    """``text`` about command-line ``option``, or about ``column`` of manifest row ``where``."""
    return _located(where, f"column '{column}': {text}" if where else f"{option}: {text}")


def ctc_values(items: Sequence[str], features: Sequence[str], where: str = "") -> dict[str, float]:
    """``VALUE`` items fill ``features`` in order; ``NAME=VALUE`` items name their feature.

    ``where``: the manifest row the items come from ("" for ``--ctc`` on the command line).
    """
    out: dict[str, float] = {}
    plain = [i for i in items if "=" not in i]
    named = [i for i in items if "=" in i]
    if plain and len(plain) != len(features):
        raise ValueError(
            _located(
                where,
                f"--ctc: the model expects {len(features)} CTC feature(s) "
                f"({', '.join(features)}); give that many values or NAME=VALUE pairs, got "
                f"{list(items)}",
            )
        )
    pairs = list(zip(features, plain, strict=False)) + [tuple(i.split("=", 1)) for i in named]
    for name, text in pairs:
        try:
            out[name.strip()] = float(text)
        except ValueError:
            message = f"CTC feature {name.strip()!r} must be a number, got {text!r}"
            raise ValueError(_about(where, "--ctc", name.strip(), message)) from None
    return out


def load_study(source: StudySource, ctc_features: Sequence[str]) -> Study:
    """Read the image and mask of ``source`` and attach its CTC and clinical facts.

    ValueError in the user's terms (:meth:`StudySource.explain`).
    """
    from dmfn.client.io import load_image, load_mask

    try:
        study = load_image(source.image_path, series_uid=source.series_uid)
    except ValueError as err:
        raise source.explain(err, "image") from err
    segment: str | int | None = source.segment
    if isinstance(segment, str) and segment.isdigit():
        segment = int(segment)
    try:
        mask = load_mask(source.mask_path, study, segment=segment)
    except ValueError as err:
        raise source.explain(err, "mask") from err
    try:
        age = float(source.age_years)
    except ValueError:
        message = f"must be a number of years, got {source.age_years!r}"
        raise ValueError(_about(source.where, "--age", "age_years", message)) from None
    return Study(
        hu=study.hu,
        spacing_mm=study.spacing_mm,
        origin_lps_mm=study.origin_lps_mm,
        direction=study.direction,
        mask=mask,
        ctc=ctc_values(source.ctc, ctc_features, source.where),
        clinical=Clinical(age, source.sex, source.location),
        image_id=source.image_id or study.image_id or source.image_path.name,
    )


def read_sources(path: Path, ctc_features: Sequence[str]) -> list[StudySource]:
    """The studies of a manifest CSV, read by the one manifest reader
    (:func:`dmfn.client.manifest.read_manifest`, unlabelled); ValueError naming line and column."""
    manifest = read_manifest(path, None, ctc_features, labelled=False)
    return [
        StudySource(
            image_path=row.image_path,
            mask_path=row.mask_path,
            segment=row.segment,
            ctc=tuple(
                f"{name}={value!r}" for name, value in zip(ctc_features, row.ctc, strict=True)
            ),
            age_years=repr(row.age_years),
            sex=row.sex,
            location=row.location,
            image_id=row.image_id,
            where=f"manifest {manifest.path} line {row.line}",
            series_uid=row.series_uid,
            patient_id=row.patient_id,
            split=row.split or "",
            label=row.label or "",
        )
        for row in manifest.rows
    ]


def format_prediction(prediction: Prediction, indent: str = "") -> str:
    """Human-readable lines: the top-3 classes with probabilities, the malignant probability,
    the suggested management and the lesion measurements with their units (mm, mm^2, mm^3).

    The one formatter of predictions for people (``dmfn predict``, ``make demo``); every line
    starts with ``indent``.
    """
    lines = [f"study {prediction.image_id or '-'}  (model {prediction.model_version})"]
    width = max(len(label) for label, _ in prediction.top3)
    for rank, (label, prob) in enumerate(prediction.top3, start=1):
        lines.append(f"  {rank}. {label:<{width}}  {prob:6.1%}")
    lines.append(f"  malignant probability: {prediction.malignant_prob:.1%}")
    lines.append(
        f"  suggested management:  {prediction.management_detail or prediction.management}"
        "  (a local policy, not from the paper)"
    )
    lines.append("  measurements:")
    name_width = max(len(name) for name in prediction.measurements)
    for name, value in prediction.measurements.items():
        unit = S.MEASUREMENT_UNITS.get(name, "")
        lines.append(f"    {name:<{name_width}}  {value:12.1f} {unit}".rstrip())
    return "\n".join(indent + line for line in lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmfn predict",
        description=(
            "Classify mediastinal lesions with a running dmfn server (`dmfn serve`, --url), or "
            "in this process from a checkpoint (--checkpoint; needs torch). Both compute the same "
            "numbers from the same request. Only the lesion box plus the model's ROI margin "
            "leaves this machine, as int16 HU, with the CTC and clinical values; no DICOM header "
            "or identifier is sent. --out writes the predictions CSV that `dmfn evaluate` reads."
        ),
    )
    p.add_argument(
        "image",
        nargs="?",
        type=Path,
        help="a DICOM series folder or a NIfTI (.nii/.nii.gz) / NRRD volume",
    )
    p.add_argument("--mask", type=Path, help="lesion mask (NIfTI, NRRD or 3D Slicer .seg.nrrd)")
    p.add_argument(
        "--segment", help="segment name (Slicer .seg.nrrd) or label value in the mask file"
    )
    p.add_argument(
        "--series-uid",
        metavar="UID",
        help="SeriesInstanceUID to load when the IMAGE folder holds several CT series (the "
        "error lists them)",
    )
    p.add_argument(
        "--ctc",
        action="append",
        default=[],
        help="CTC value(s) in the model's units (the paper's: CTC level in pg/ml); repeat or use "
        "NAME=VALUE when the model has several CTC features",
    )
    p.add_argument("--age", help="age in years")
    p.add_argument("--sex", choices=("M", "F"), help="sex")
    p.add_argument("--location", choices=S.LOCATIONS, help="mediastinal compartment of the lesion")
    p.add_argument(
        "--manifest",
        type=Path,
        help="CSV of many studies (image_path, mask_path, [segment], [series_uid], [image_id], "
        "CTC columns, age_years, sex, location) instead of one IMAGE",
    )
    p.add_argument(
        "--url",
        default=None,
        help="server host:port, or http(s)://host:port as `dmfn serve` prints it "
        "(127.0.0.1:8000 http, 127.0.0.1:8001 grpc)",
    )
    p.add_argument(
        "--tls", action="store_true", help="connect with TLS (a server started with --tls-cert)"
    )
    p.add_argument(
        "--ca-cert",
        type=Path,
        default=None,
        help="PEM certificate of the authority that signed the server's certificate (implies --tls)",
    )
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="file holding the API key of a server started with --api-keys (never put a key on "
        "the command line); default: $DMFN_API_KEY, else the file named by $DMFN_API_KEY_FILE",
    )
    p.add_argument(
        "--client-cert",
        type=Path,
        default=None,
        help="PEM client certificate, for a server started with --tls-client-ca (with "
        "--client-key; implies --tls)",
    )
    p.add_argument("--client-key", type=Path, default=None, help="PEM key of --client-cert")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http", help="http (default) or grpc")
    p.add_argument("--model", default=S.PIPELINE_MODEL, help=f"ensemble ({S.PIPELINE_MODEL})")
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-request timeout, s (60)"
    )
    p.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight for --manifest (4)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON list (machine output)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="predict in this process with this checkpoint instead of a server (no --url)",
    )
    p.add_argument(
        "--management",
        type=Path,
        default=None,
        help="with --checkpoint: the management policy JSON (default: dmfn's, "
        "contract/data/management_default.json; a server applies the policy it was exported with)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the predictions CSV here: image and patient rows, one probability column "
        "per class, malignant_prob, predicted, the model's provenance (an existing file is "
        "refused unless --overwrite)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing predictions CSV at --out"
    )
    return p


def _kind(path: Path, name: str) -> str:
    """``"folder"``, ``"file"``, ``"other"`` or ``""`` (missing) for the ``path`` given as
    ``name``; one that cannot be looked at (a folder on the way this user may not enter) raises
    ValueError naming ``name``."""
    try:
        if path.is_dir():
            return "folder"
        if path.is_file():
            return "file"
        return "other" if path.exists() else ""
    except OSError as err:
        raise ValueError(f"{name}: {path} cannot be accessed ({one_line(err)})") from None


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the command line that needs no server: IMAGE or --manifest (not both),
    the options IMAGE needs, existing input paths, a numeric age, an --out that is not an
    earlier result (unless --overwrite). ValueError says what is wrong.
    """
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.checkpoint is not None:
        if args.url is not None:
            raise ValueError("give either --url (a server) or --checkpoint (in-process), not both")
        if _kind(args.checkpoint, "--checkpoint") != "file":
            raise ValueError(f"--checkpoint: {args.checkpoint} is not a file")
    elif args.management is not None:
        raise ValueError("--management: only with --checkpoint (a server applies its own policy)")
    if args.out is not None:
        try:
            check_new(args.out, args.overwrite)
        except InvalidInput as err:
            raise ValueError(err.in_flags(OUT_FLAGS)) from None
        except OSError as err:
            raise ValueError(f"--out: {args.out} cannot be accessed ({one_line(err)})") from None
    if args.manifest is not None:
        if args.image is not None:
            raise ValueError("give either IMAGE or --manifest, not both")
        if _kind(args.manifest, "--manifest") != "file":
            raise ValueError(f"--manifest: {args.manifest} is not a file")
        if args.series_uid is not None:
            raise ValueError("--series-uid: give it per study in the manifest's series_uid column")
        return
    if args.image is None:
        raise ValueError("give IMAGE (with --mask, --ctc, --age, --sex, --location) or --manifest")
    missing = [f"--{n}" for n in ("mask", "ctc", "age", "sex", "location") if not getattr(args, n)]
    if missing:
        raise ValueError(f"IMAGE needs {', '.join(missing)}")
    image = _kind(args.image, "IMAGE")
    if not image:
        raise ValueError(f"IMAGE: {args.image} does not exist")
    if args.series_uid is not None and image != "folder":
        raise ValueError(
            f"--series-uid: chooses a series of a DICOM series folder, but IMAGE {args.image} "
            "is a file"
        )
    if _kind(args.mask, "--mask") != "file":
        raise ValueError(f"--mask: {args.mask} is not a file")
    try:
        float(args.age)
    except ValueError:
        raise ValueError(f"--age must be a number of years, got {args.age!r}") from None


def _sources(args: argparse.Namespace, ctc_features: Sequence[str]) -> list[StudySource]:
    """The studies to send (after :func:`check_arguments`); the manifest needs the CTC names."""
    if args.manifest is not None:
        return read_sources(args.manifest, ctc_features)
    return [
        StudySource(
            args.image,
            args.mask,
            args.segment,
            tuple(args.ctc),
            args.age,
            args.sex,
            args.location,
            series_uid=args.series_uid,
        )
    ]


def _chunks(items: list[StudySource], size: int) -> Iterator[list[StudySource]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: What predicts: a DmfnClient or an in-process predictor with its interface (contract,
#: predict_many, a context manager).
Predictor = Any


def run(args: argparse.Namespace, predictor: Predictor) -> int:
    """Predict the studies of ``args`` (checked by :func:`check_arguments`) with ``predictor``
    (a :class:`~dmfn.client.sdk.DmfnClient`, or an in-process predictor with its interface);
    print them, write ``--out``; returns the exit status. Progress is shown for a manifest; one
    study's output is its prediction, or one line saying why there is none."""
    with predictor:
        try:
            contract = predictor.contract
            sources = _sources(args, contract.ctc_features)
        except DmfnServerError as err:
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_FAILED
        except ValueError as err:
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_USAGE
        results: list[tuple[StudySource, Prediction | Exception]] = []
        # one study: no progress lines, its prediction or its error is the whole output
        stream = sys.stderr if args.manifest is not None else io.StringIO()
        with Progress(len(sources), "dmfn predict", stream=stream) as progress:
            for chunk in _chunks(sources, LOAD_AHEAD * args.concurrency):
                studies: list[Study | Exception] = []
                for source in chunk:
                    try:
                        studies.append(load_study(source, contract.ctc_features))
                    except ValueError as err:  # already in the user's terms
                        studies.append(err)
                ok = [s for s in studies if isinstance(s, Study)]
                answers = iter(predictor.predict_many(ok, args.concurrency, return_exceptions=True))
                chunk_results = [
                    (src, s if isinstance(s, Exception) else next(answers))
                    for src, s in zip(chunk, studies, strict=True)
                ]
                results += chunk_results
                progress.update(len(chunk), sum(isinstance(r, Exception) for _, r in chunk_results))
    failed = [(src, r) for src, r in results if isinstance(r, Exception)]
    if args.out is not None:
        written = [(src, r) for src, r in results if isinstance(r, Prediction)]
        try:
            write_csv(args.out, contract.class_names, written, contract.provenance, args.overwrite)
        except InvalidInput as err:  # the file appeared while predicting
            print(f"dmfn predict: {err.in_flags(OUT_FLAGS)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"dmfn predict: wrote {args.out}", file=sys.stderr)
    if args.json:
        document = [
            {"image_path": str(src.image_path), "error": str(r)}
            if isinstance(r, Exception)
            else {"image_path": str(src.image_path), **r.to_dict()}
            for src, r in results
        ]
        print(json.dumps(document, indent=2))  # always a list, one entry per study
    elif args.out is None:
        for _, result in results:
            if not isinstance(result, Exception):
                print(format_prediction(result))
    for src, problem in failed:
        print(f"dmfn predict: {src.image_path}: {problem}", file=sys.stderr)
    if failed:
        usage = all(isinstance(e, ValueError) for _, e in failed) and len(results) == 1
        return EXIT_USAGE if usage else EXIT_FAILED
    return EXIT_OK


def write_csv(
    path: Path,
    class_names: Sequence[str],
    results: Sequence[tuple[StudySource, Prediction]],
    provenance: Provenance,
    overwrite: bool = False,
) -> Path:
    """The predictions CSV (:mod:`dmfn.contract.predictions`): one image row per study, then one
    patient row per patient (the mean of its images' probabilities). A study without a patient
    id is its own patient. Written whole or not at all; an existing file is replaced only with
    ``overwrite`` (else :class:`~dmfn.contract.errors.InvalidInput` naming ``out``)."""
    images: list[PredictionRow] = []
    by_patient: dict[str, list[PredictionRow]] = {}
    for src, p in results:
        patient = src.patient_id or p.image_id or str(src.image_path)
        row = PredictionRow(
            "image", patient, p.malignant_prob, tuple(p.probs[c] for c in class_names),
            p.image_id, src.split, src.label,
        )  # fmt: skip
        images.append(row)
        by_patient.setdefault(patient, []).append(row)
    patients = [
        PredictionRow(
            "patient", pid, float(np.mean([r.malignant_prob for r in rows])),
            tuple(float(v) for v in np.mean([r.probs for r in rows], axis=0)), "",
            rows[0].split, rows[0].label,
        )
        for pid, rows in by_patient.items()
    ]  # fmt: skip
    return write_predictions(
        path, class_names, [*images, *patients], provenance, overwrite=overwrite
    )
