"""What slow clients cost `dmfn serve`: resident memory and disk held by uploads that stop.

A slow client sends most of a large body and then waits, keeping the connection open (one byte
per 29 s is enough to beat a 30 s read timeout). This measures, on the committed demo model (the
real 68 MiB body limit), with N such clients from N loopback addresses held open together:

- **HTTP**: each sends 66 of a declared 67 MiB. The front door buffers HTTP bodies (256 KiB in
  memory, the rest in its private temp folder), so Triton should not grow at all; the cost is
  disk, bounded by the in-flight limits (``--max-requests``, 64 by default).
- **gRPC**: each opens an HTTP/2 stream (written here by hand: the grpc library cannot stop in
  the middle of a message) and sends 66 of a 67 MiB message. nginx cannot buffer gRPC bodies, so
  Triton holds what arrived: this is the per-client cost the limits bound.

For each case: requests accepted and refused (429), resident memory of Triton (with its workers)
and of nginx before and while the uploads are held, the front door's temp folder, and whether a
good request still answered meanwhile. The cost per held upload is the "documented constant" of
docs/deploy.md. Not a test: run it by hand (about a minute)::

    .venv/bin/python benchmarks/slow_clients.py [--clients 16,200]
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

BODY = 67 * 2**20
SENT = 66 * 2**20


# --------------------------------------------------------------------------- HTTP/1.1
def http_upload(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.sendall(
        f"POST /v2/models/dmfn_pipeline/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n"
        "Inference-Header-Content-Length: 200\r\n\r\n".encode()
    )
    chunk = bytes(1 << 20)
    sock.settimeout(0.2)
    try:
        for _ in range(SENT // len(chunk)):
            sock.sendall(chunk)
    except (TimeoutError, OSError):
        pass  # refused (429) and closed: the caller reads the answer
    return sock


# --------------------------------------------------------------------------- HTTP/2 by hand
def _int(value: int, prefix_bits: int = 7) -> bytes:
    """HPACK integer with a ``prefix_bits`` prefix (RFC 7541 5.1); the prefix's flags are 0."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append((value % 128) + 128)
        value //= 128
    return bytes([*out, value])


def _literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + _int(len(name)) + name.encode() + _int(len(value)) + value.encode()


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


class SlowGrpcStream:
    """One HTTP/2 connection with one ModelInfer stream that sends ``SENT`` bytes of a gRPC
    message declared ``BODY`` bytes long, honouring flow control, then holds."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=30, source_address=(source, 0)
        )
        self.conn_window, self.stream_window, self.refused = 65535, 65535, False
        headers = b"".join(
            _literal(n, v)
            for n, v in (
                (":method", "POST"), (":scheme", "http"),
                (":path", "/inference.GRPCInferenceService/ModelInfer"), (":authority", "x"),
                ("content-type", "application/grpc"), ("te", "trailers"),
            )
        )  # fmt: skip
        self.sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0) + _frame(1, 4, 1, headers)
        )
        self.pending = b"\x00" + struct.pack(">I", BODY)  # the gRPC message prefix
        self.remaining = SENT

    def _read_frames(self, wait_s: float) -> None:
        self.sock.settimeout(wait_s)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        if not data:
            self.refused = True
            return
        self._buffer = getattr(self, "_buffer", b"") + data
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload, self._buffer = self._buffer[9 : 9 + length], self._buffer[9 + length :]
            if kind == 4 and not flags & 1:  # SETTINGS: ack, read the initial window
                for i in range(0, len(payload), 6):
                    key, value = struct.unpack(">HI", payload[i : i + 6])
                    if key == 4:
                        self.stream_window += value - 65535
                self.sock.sendall(_frame(4, 1, 0))
            elif kind == 8:  # WINDOW_UPDATE
                increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
                if stream == 0:
                    self.conn_window += increment
                else:
                    self.stream_window += increment
            elif kind in (1, 3, 7):  # response headers, RST_STREAM, GOAWAY: refused
                self.refused = True

    def pump(self, seconds: float) -> None:
        """Send as much as flow control allows, for up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while self.remaining > 0 and not self.refused and time.monotonic() < deadline:
            window = min(self.conn_window, self.stream_window, 16384)
            if window <= 0:
                self._read_frames(0.05)
                continue
            n = min(window, self.remaining)
            body = self.pending + bytes(n - len(self.pending)) if self.pending else bytes(n)
            self.pending = b""
            self.sock.sendall(_frame(0, 0, 1, body))
            self.conn_window -= n
            self.stream_window -= n
            self.remaining -= n
            self._read_frames(0.0001)


# --------------------------------------------------------------------------- measurement
def _rss(pid: int) -> float:
    from dmfn.serving.processes import tree_rss_bytes

    return tree_rss_bytes(pid) / 2**20


def _disk_used(folder: Path) -> float:
    """MiB in use on ``folder``'s file system (nginx unlinks its temp files as it opens them,
    so their space shows here, not in a listing)."""
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20


def _good(service) -> bool:
    import tritonclient.http as httpclient
    from serving_utils import infer_inputs, make_studies, study_arrays

    client = httpclient.InferenceServerClient(service.http_url, network_timeout=60)
    try:
        client.infer("dmfn_pipeline", infer_inputs(httpclient, study_arrays(make_studies(1, 3))))
        return True
    except Exception:
        return False
    finally:
        client.close()


def run(service, protocol: str, n: int) -> dict:
    from service_utils import answered_status

    triton_pid, door_pid = service.triton.process.pid, service.front.process.pid
    before = (_rss(triton_pid), _rss(door_pid))
    disk_before = _disk_used(service.run_dir)
    held: list = []
    t0 = time.monotonic()
    for i in range(n):
        source = f"127.{1 + i // 250}.{i % 250}.{2 + (i // 250) % 200}"
        if protocol == "http":
            held.append(http_upload(service.config.http_port, source))
        else:
            stream = SlowGrpcStream(service.config.grpc_port, source)
            stream.pump(5.0)
            held.append(stream)
    time.sleep(1.0)
    if protocol == "http":
        statuses = [answered_status(s, 0.01) for s in held]
        accepted, refused = statuses.count(None), statuses.count(429)
    else:
        for stream in held:
            stream._read_frames(0.01)
        refused = sum(s.refused for s in held)
        accepted = n - refused
    during = (_rss(triton_pid), _rss(door_pid))
    disk = max(0.0, _disk_used(service.run_dir) - disk_before)
    good = _good(service)
    took = time.monotonic() - t0
    for item in held:
        (item if protocol == "http" else item.sock).close()
    time.sleep(1.0)
    return {
        "protocol": protocol, "clients": n, "accepted": accepted, "refused": refused,
        "triton_mib": (round(before[0]), round(during[0])),
        "nginx_mib": (round(before[1]), round(during[1])), "temp_disk_mib": round(disk),
        "good_request_ok": good, "seconds": round(took, 1),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="16,200", help="numbers of slow clients (16,200)")
    parser.add_argument("--grpc-clients", default="4,16", help="numbers of slow gRPC streams")
    args = parser.parse_args()
    from service_utils import service_config

    from dmfn.resources import demo_checkpoint
    from dmfn.serving.config import ServingSettings
    from dmfn.serving.service import DmfnService
    from dmfn.training.export import export

    with tempfile.TemporaryDirectory(prefix="dmfn-slow-") as tmp:
        repo = Path(tmp) / "repo"
        export(demo_checkpoint(), repo, ServingSettings(), parity_studies=2)
        service = DmfnService(service_config(repo, Path(tmp) / "logs", canary_interval_s=None))
        service.start()
        try:
            c = service.config
            print(
                f"dmfn serve, demo model: bodies up to {service.limits.max_body_bytes() / 2**20:.1f}"
                f" MiB, {c.max_requests_per_client} requests in flight per client, "
                f"{c.max_requests} in all; each slow upload sends {SENT >> 20} of {BODY >> 20} MiB"
            )
            rows = [run(service, "http", int(n)) for n in args.clients.split(",")]
            rows += [run(service, "grpc", int(n)) for n in args.grpc_clients.split(",")]
        finally:
            service.shutdown()
    head = f"{'protocol':8} {'clients':>7} {'held':>5} {'429':>5} {'Triton MiB':>15} {'nginx MiB':>12} {'temp disk':>10} {'good req':>8}"
    print(head)
    for r in rows:
        t, g = r["triton_mib"], r["nginx_mib"]
        print(
            f"{r['protocol']:8} {r['clients']:>7} {r['accepted']:>5} {r['refused']:>5} "
            f"{t[0]:>6} -> {t[1]:<6} {g[0]:>4} -> {g[1]:<5} {r['temp_disk_mib']:>7} MiB "
            f"{'ok' if r['good_request_ok'] else 'FAILED':>8}"
        )
        if r["accepted"]:
            print(
                f"{'':8} per held upload: Triton {(t[1] - t[0]) / r['accepted']:+.1f} MiB, nginx "
                f"{(g[1] - g[0]) / r['accepted']:+.2f} MiB, disk {r['temp_disk_mib'] / r['accepted']:.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
