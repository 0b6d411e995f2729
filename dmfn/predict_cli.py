"""``dmfn predict``: classify studies through a running server (``--url``) or in this process
from a checkpoint (``--checkpoint``); the options, their checks before any work, and the choice of
predictor (the in-process one needs torch, so it lives in :mod:`dmfn.training`). The work is
:func:`dmfn.client.predict.run`.

One study::

    dmfn predict CT.nii.gz --mask lesion.nii.gz --ctc 12.5 --age 54 --sex F --location anterior
    dmfn predict dicom_folder/ --mask seg.seg.nrrd --segment lesion --ctc 12.5 ...
    dmfn predict dicom_folder/ --series-uid 1.2.826... --mask lesion.nii.gz ...

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
from dmfn.client.flags import add_overwrite
from dmfn.client.io.errors import one_line
from dmfn.client.predict import EXIT_USAGE, OUT_FLAGS, StudySource, run
from dmfn.client.sdk import DEFAULT_TIMEOUT_S, PROTOCOLS, DmfnClient
from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import check_new


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
    add_overwrite(p, "replace an existing predictions CSV at --out")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn predict``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_arguments(args)
        if args.checkpoint is not None:
            from dmfn.training.inference import LocalPredictor

            predictor = LocalPredictor(args.checkpoint, args.management)
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
            )
    except ValueError as err:  # before any contact with a server or any work
        parser.print_usage(sys.stderr)
        print(f"dmfn predict: error: {err}", file=sys.stderr)
        return EXIT_USAGE
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
    )


if __name__ == "__main__":
    sys.exit(main())
