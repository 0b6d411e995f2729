"""``dmfn keys``: create, list and revoke the API keys of ``dmfn serve --api-keys FILE``.

``dmfn keys new NAME --file FILE`` prints a new key once, on standard output, and stores only
its SHA-256 under NAME (the file is created with mode 0600). A running ``dmfn serve`` picks the
change up within a second. See :mod:`dmfn.serving.auth`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .auth import NAME, ApiKeys, KeysFileError, key_digest, new_key, write_keys

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn keys`` argument parser (sub-commands new, list, revoke)."""
    parser = argparse.ArgumentParser(
        prog="dmfn keys",
        description=(
            "Manage the API keys file of `dmfn serve --api-keys FILE`. Only each key's SHA-256 "
            "is stored; `new` prints the key itself once. Give it to the client through a file "
            "or the DMFN_API_KEY environment variable, never on a command line. A running "
            "server reloads the file when it changes."
        ),
    )
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="create a key: prints it once, stores its digest")
    new.add_argument("name", help="who holds the key (letters, digits, _ . @ -), e.g. pacs-gateway")
    new.add_argument("--file", type=Path, required=True, help="keys file (created if missing)")
    listing = sub.add_parser("list", help="the names of the keys in the file")
    listing.add_argument("--file", type=Path, required=True, help="keys file")
    revoke = sub.add_parser("revoke", help="remove a key by name")
    revoke.add_argument("name", help="the key's name")
    revoke.add_argument("--file", type=Path, required=True, help="keys file")
    return parser


def _read(path: Path, missing_ok: bool) -> ApiKeys:
    if missing_ok and not path.exists():
        return ApiKeys(())
    try:
        return ApiKeys.parse(path.read_text(), f"keys file {path}")
    except OSError as err:
        raise KeysFileError(f"keys file {path}: cannot be read ({err.strerror})") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn keys``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        keys = _read(args.file, missing_ok=args.action == "new")
        if args.action == "list":
            for name in keys.names:
                print(name)
            return EXIT_OK
        if args.action == "new":
            if not NAME.match(args.name):
                raise KeysFileError(
                    f"argument NAME: {args.name!r} is not a valid key name (letters, digits, "
                    "_ . @ -, at most 64, starting with a letter or digit)"
                )
            if args.name in keys.names:
                raise KeysFileError(
                    f"argument NAME: {args.file} already has a key named {args.name!r}; revoke "
                    "it first or choose another name"
                )
            key = new_key()
            write_keys(args.file, ApiKeys((*keys.entries, (args.name, key_digest(key)))))
            print(key)
            print(
                f"dmfn keys: stored the digest of {args.name!r} in {args.file}; the key above is "
                "not stored anywhere: give it to its holder now",
                file=sys.stderr,
            )
            return EXIT_OK
        if args.name not in keys.names:
            raise KeysFileError(f"argument NAME: {args.file} has no key named {args.name!r}")
        write_keys(args.file, ApiKeys(tuple(e for e in keys.entries if e[0] != args.name)))
        print(f"dmfn keys: revoked {args.name!r} in {args.file}", file=sys.stderr)
        return EXIT_OK
    except KeysFileError as err:
        print(f"dmfn keys: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
