"""``dmfn predict``: classify studies through a running server (``--url``) or in this process
from a checkpoint (``--checkpoint``). The library is :mod:`dmfn.client.predict`; this command only
chooses the predictor (the in-process one needs torch, so it lives in :mod:`dmfn.training`)."""

from __future__ import annotations

import logging
import sys

from dmfn.client.credentials import read_key_file
from dmfn.client.predict import EXIT_USAGE, build_parser, check_arguments, run
from dmfn.client.sdk import DmfnClient


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
    return run(args, predictor)


if __name__ == "__main__":
    sys.exit(main())
