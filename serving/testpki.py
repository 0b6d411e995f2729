"""A throwaway certificate authority for trying TLS and mutual TLS on one machine: the tests, the
load tests and first steps with ``dmfn serve --tls-cert --tls-client-ca``. Not for production:
a hospital's certificates come from its own PKI (docs/deploy.md). Needs the ``openssl`` command.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

FILES = (
    "ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key",
    "intruder.pem", "intruder.key",
)  # fmt: skip


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_test_pki(folder: Path, days: int = 2) -> dict[str, Path]:
    """Write into ``folder`` (mode 0700): a CA (``ca.pem``/``ca.key``); a server certificate for
    127.0.0.1 and localhost signed by it; a client certificate (CN ``pacs-gateway``) signed by
    it; and a self-signed ``intruder`` client certificate no server should accept. Returns
    name -> path; private keys are mode 0600."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    p = {name: folder / name for name in FILES}
    valid = ("-days", str(days))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", *valid, "-keyout", str(p["ca.key"]),
             "-out", str(p["ca.pem"]), "-subj", "/CN=dmfn test CA")  # fmt: skip
    san = folder / "server.ext"
    san.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extra in (
        ("server", "/CN=localhost", ["-extfile", str(san)]),
        ("client", "/CN=pacs-gateway", []),
    ):
        csr = folder / f"{name}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p[f"{name}.key"]),
                 "-out", str(csr), "-subj", subject)  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(p["ca.pem"]), "-CAkey",
                 str(p["ca.key"]), "-CAcreateserial", *valid, "-out", str(p[f"{name}.pem"]),
                 *extra)  # fmt: skip
        csr.unlink()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", *valid, "-keyout",
             str(p["intruder.key"]), "-out", str(p["intruder.pem"]), "-subj", "/CN=intruder")  # fmt: skip
    for name in FILES:
        if name.endswith(".key"):
            p[name].chmod(0o600)
    return p
