"""``dmfn predict``: classify studies through a running server (``--url``) or in this process
from a checkpoint (``--checkpoint``); the options, their checks before any work, and the choice of
predictor (the in-process one needs torch, so it lives in :mod:`dmfn.training`). The work is
:func:`dmfn.client.predict.run`.

One study::

    dmfn predict CT.nii.gz --mask lesion.nii.gz --ctc 12.5 --age 54 --sex F --location anterior
    dmfn predict dicom_folder/ --mask seg.seg.nrrd --segment lesion --ctc 12.5 ...
    dmfn predict dicom_folder/ --series-uid 1.2.826... --mask lesion.nii.gz ...

A study on a PACS, fetched over DICOMweb, its CT series chosen by a documented rule (or
``--series-uid``) with the DICOM SEG that references it; age and sex from the DICOM header unless
given; the DICOM SR of the prediction stored back into the study with ``--store``::

    dmfn predict --dicomweb http://pacs:8042/dicom-web --study-uid 1.2.826... --ctc 12.5 \
        --location anterior --checkpoint model.pt --store

Many studies (a CSV with ``image_path``, ``mask_path``, optional ``segment``, ``series_uid`` and
``image_id``, one column per CTC feature of the model, ``age_years``, ``sex``, ``location``; other
columns such as those of a ``dmfn synth`` manifest are ignored; relative paths are relative to the
CSV)::

    dmfn predict --manifest studies.csv --concurrency 4 --json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmfn.client.credentials import read_key_file
from dmfn.client.dicomweb import Pacs
from dmfn.client.flags import add_overwrite
from dmfn.client.io.errors import one_line
from dmfn.client.predict import EXIT_USAGE, OUT_FLAGS, Predictor, StudySource, run
from dmfn.client.predict_pacs import PacsRequest, run_pacs
from dmfn.client.reports import SR_FLAGS, Reports
from dmfn.client.sdk import DEFAULT_TIMEOUT_S, PROTOCOLS, DmfnClient
from dmfn.contract import schema as S
from dmfn.contract.audit import AuditLog, client_audit
from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import check_new
from dmfn.explain_output import HeatMaps, check_explain_folder


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn predict`` argument parser."""
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
    p.add_argument(
        "--mask",
        type=Path,
        help="lesion mask (NIfTI, NRRD, 3D Slicer .seg.nrrd or DICOM SEG of the IMAGE series)",
    )
    p.add_argument(
        "--segment",
        help="segment name (Slicer .seg.nrrd), SegmentNumber or SegmentLabel (DICOM SEG), or "
        "label value in the mask file; needed when the file holds several (the error lists them)",
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
        "--sr",
        type=Path,
        default=None,
        metavar="OUT",
        help="write the DICOM Structured Report (TID 1500) of each prediction: a file for one "
        "study, a folder (one <image_id>_sr.dcm per study) for --manifest; needs DICOM images",
    )
    p.add_argument(
        "--explain",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --checkpoint: write Grad-CAM heat maps of each prediction into DIR "
        "(<image id>_views.png, <image id>_cam.npy) and, for a labelled manifest, a gallery of "
        "the most confident right, wrong and most uncertain studies (docs/explain.md)",
    )
    pacs = p.add_argument_group(
        "a study on a PACS (DICOMweb)",
        "Fetch the study's CT series and its DICOM SEG from a PACS instead of IMAGE and --mask. "
        "With several CT series the rule is: not a localizer, axial, contrast-enhanced where the "
        "header says so, thinnest slices, most slices (else give --series-uid); the choice and "
        "why is printed. Age and sex come from the DICOM header unless --age/--sex are given.",
    )
    pacs.add_argument("--dicomweb", metavar="URL", help="the PACS's DICOMweb root URL")
    pacs.add_argument("--study-uid", metavar="UID", help="StudyInstanceUID of the study")
    pacs.add_argument(
        "--seg-uid",
        metavar="UID",
        help="SeriesInstanceUID of the SEG to use when several reference the CT series",
    )
    pacs.add_argument(
        "--store",
        action="store_true",
        help="store the prediction's DICOM SR into the study (STOW-RS); only after a prediction",
    )
    pacs.add_argument(
        "--dicomweb-token-file",
        type=Path,
        default=None,
        help="file holding a bearer token for the PACS (never put it on the command line)",
    )
    pacs.add_argument(
        "--dicomweb-ca-cert", type=Path, default=None, help="PEM CA bundle of an https PACS"
    )
    add_overwrite(p, "replace an existing predictions CSV at --out or SR at --sr")
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
    if args.explain is not None:
        if args.checkpoint is None:
            raise ValueError(
                "--explain: heat maps need gradients through the net, so they are made in this "
                "process: give --checkpoint (a server runs the net without them)"
            )
        try:
            check_explain_folder(args.explain, args.overwrite)
        except InvalidInput as err:
            raise ValueError(err.in_flags({"explain": "--explain"})) from None
    _check_report_flags(args)
    if args.out is not None:
        _check_new_file(args.out, args.overwrite, "--out", OUT_FLAGS)
    if args.dicomweb is not None:
        _check_pacs(args)
        return
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
    if args.sr is not None and image != "folder":
        raise ValueError(
            f"--sr: a DICOM SR belongs to the study of a DICOM CT series, but IMAGE {args.image} "
            "is a file"
        )
    if args.series_uid is not None and image != "folder":
        raise ValueError(
            f"--series-uid: chooses a series of a DICOM series folder, but IMAGE {args.image} "
            "is a file"
        )
    if _kind(args.mask, "--mask") != "file":
        raise ValueError(f"--mask: {args.mask} is not a file")
    _check_age(args.age)


def _check_age(age: str) -> None:
    try:
        float(age)
    except ValueError:
        raise ValueError(f"--age must be a number of years, got {age!r}") from None


def _check_new_file(path: Path, overwrite: bool, flag: str, flags: dict[str, str]) -> None:
    """An output file ``flag`` that is not an earlier result (unless ``overwrite``), in the
    command line's words (``flags``: API argument -> flag)."""
    try:
        check_new(path, overwrite, flag.lstrip("-"))
    except InvalidInput as err:
        raise ValueError(err.in_flags(flags)) from None
    except OSError as err:
        raise ValueError(f"{flag}: {path} cannot be accessed ({one_line(err)})") from None


#: Options that only make sense with --dicomweb.
PACS_ONLY = ("study_uid", "seg_uid", "store", "dicomweb_token_file", "dicomweb_ca_cert")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_report_flags(args: argparse.Namespace) -> None:
    """--sr and the PACS options: only where they apply; an SR file that exists needs
    --overwrite (a folder for --manifest is checked study by study before any work)."""
    if args.dicomweb is None:
        given = [_flag(n) for n in PACS_ONLY if getattr(args, n)]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --dicomweb")
    if args.sr is None or args.manifest is not None:
        return
    _check_new_file(args.sr, args.overwrite, "--sr", SR_FLAGS)


def _check_pacs(args: argparse.Namespace) -> None:
    """--dicomweb URL --study-uid UID with --ctc and --location; no IMAGE, --mask, --manifest."""
    clash = [
        name
        for name, given in (("IMAGE", args.image), ("--mask", args.mask),
                            ("--manifest", args.manifest))
        if given is not None
    ]  # fmt: skip
    if clash:
        raise ValueError(f"--dicomweb fetches the image and the SEG; drop {', '.join(clash)}")
    missing = [f for f, v in (("--study-uid", args.study_uid), ("--ctc", args.ctc),
                              ("--location", args.location)) if not v]  # fmt: skip
    if missing:
        raise ValueError(f"--dicomweb needs {', '.join(missing)}")
    if args.age is not None:
        _check_age(args.age)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn predict``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_arguments(args)
        audit = client_audit()  # one log for the predictor's lines and the refusals here
        if args.checkpoint is not None:
            from dmfn.training.inference import LocalPredictor

            predictor = LocalPredictor(args.checkpoint, args.management, audit=audit or False)
        else:
            key = None
            if args.api_key_file is not None:
                key = read_key_file(args.api_key_file, "api_key_file (--api-key-file)")
            predictor = DmfnClient(
                args.url,
                args.protocol,
                args.model,
                args.timeout,
                tls=args.tls,
                ca_cert=None if args.ca_cert is None else str(args.ca_cert),
                api_key=key,
                client_cert=None if args.client_cert is None else str(args.client_cert),
                client_key=None if args.client_key is None else str(args.client_key),
                audit=audit or False,
            )
    except ValueError as err:  # before any contact with a server or any work
        parser.print_usage(sys.stderr)
        print(f"dmfn predict: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.dicomweb is not None:
        return _main_pacs(args, predictor, audit)
    study = None
    if args.image is not None:
        study = StudySource(
            args.image, args.mask, args.segment, tuple(args.ctc), args.age, args.sex,
            args.location, series_uid=args.series_uid,
        )  # fmt: skip
    return run(
        predictor,
        study=study,
        manifest=args.manifest,
        concurrency=args.concurrency,
        out=args.out,
        overwrite=args.overwrite,
        as_json=args.json,
        reports=None if args.sr is None else Reports(args.sr, overwrite=args.overwrite,
                                                     folder=args.manifest is not None),
        audit=audit,
        explain=None if args.explain is None else HeatMaps(predictor, args.explain),
    )  # fmt: skip


def _main_pacs(args: argparse.Namespace, predictor: Predictor, audit: AuditLog | None) -> int:
    """``--dicomweb``: fetch the study, predict, report (:func:`dmfn.client.predict_pacs.run_pacs`)."""
    try:
        token = None
        if args.dicomweb_token_file is not None:
            token = read_key_file(args.dicomweb_token_file, "--dicomweb-token-file")
        pacs = Pacs(args.dicomweb, token=token, ca_cert=args.dicomweb_ca_cert,
                    timeout=args.timeout)  # fmt: skip
    except ValueError as err:
        print(f"dmfn predict: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    request = PacsRequest(
        args.study_uid, tuple(args.ctc), args.location, args.age, args.sex,
        series_uid=args.series_uid, seg_series_uid=args.seg_uid, segment=args.segment,
    )  # fmt: skip
    return run_pacs(predictor, pacs, request, sr=args.sr, store=args.store,
                    overwrite=args.overwrite, out=args.out, as_json=args.json, audit=audit,
                    explain=None if args.explain is None else HeatMaps(predictor, args.explain),
                    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
