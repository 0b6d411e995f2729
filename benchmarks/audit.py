"""What an audit line costs (contract/audit.py): ``AuditLog.record`` (open with O_APPEND, one
write, close, a size check for rotation) beside its peer, a plain ``open(path, "a").write`` of the
same JSON line, in one run; and both beside a served prediction's latency (tens of ms).

    .venv/bin/python benchmarks/audit.py [--lines 5000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import best_time

from dmfn.contract.audit import AuditLog

FIELDS = dict(source="sdk", caller="alice@ws", outcome="ok", request_id="0" * 32,
              study_uid="1.2.826.0.1.3680043.8.498.1", series_uid="1.2.826.0.1.3680043.8.498.2",
              model_sha256="a" * 64, top_class="cyst", malignant_prob=0.2, duration_ms=41.0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        audit = AuditLog(Path(folder) / "audit.jsonl")
        plain = Path(folder) / "plain.jsonl"
        line = json.dumps(FIELDS) + "\n"

        def audited() -> None:
            for _ in range(args.lines):
                audit.record(**FIELDS)

        def appended() -> None:
            for _ in range(args.lines):
                with plain.open("a") as handle:
                    handle.write(line)

        t_audit, _ = best_time(audited, 3)
        t_plain, _ = best_time(appended, 3)
    per_audit, per_plain = t_audit / args.lines * 1e6, t_plain / args.lines * 1e6
    print(f"AuditLog.record: {per_audit:7.1f} us/line")
    print(f"plain append   : {per_plain:7.1f} us/line")
    print(f"ratio audit / plain: {per_audit / per_plain:.2f}x")
    print(f"share of a 40 ms served prediction: {per_audit / 40e3:.3%}")


if __name__ == "__main__":
    main()
