"""The parts of `dmfn serve` on their own, without Triton: size-capped logs, the front door's log
receiver, the metrics text, the spawner's death signal, the predecessor's clean-up, the shared
memory library, the workers' records."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmfn.contract.workers import (
    WorkerRecorder,
    format_request_record,
    last_request_file,
    parse_request_record,
)
from dmfn.serving.logs import REFUSAL_TAG, LogReceiver, RotatingLog
from dmfn.serving.metrics import render_service_metrics
from dmfn.serving.runstate import RunState, clear_predecessor, port_owner
from dmfn.serving.spawner import Spawner, child_setup
from dmfn.serving.supervisor import WorkerSighting, explain_death
from dmfn.serving.triton import _OutputTee, shm_private_library


def test_output_tee_closes_its_files_when_a_late_writer_lets_go(tmp_path: Path) -> None:
    # A SIGKILLed tritonserver's stubs can hold its output pipe open past close()'s wait: the
    # reader then closes the pipe and the log itself at end of file (the CI once saw both
    # garbage-collected open, a ResourceWarning).
    read, write = os.pipe()
    pipe = os.fdopen(read, "rb")
    sink = RotatingLog(tmp_path / "triton.log")
    tee = _OutputTee(pipe, None, sink=sink)
    os.write(write, b"before close\n")
    tee.close(timeout_s=0.05)
    assert not pipe.closed  # the writer still holds it: nothing lost yet
    os.write(write, b"after close\n")
    os.close(write)
    tee.join(5.0)
    assert pipe.closed and sink._file.closed
    assert (tmp_path / "triton.log").read_text() == "before close\nafter close\n"
    tee.close()  # idempotent


def test_rotating_log_caps_each_file_and_cuts_lines(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=4096, backups=2, max_line_bytes=100)
    for i in range(500):
        log.write_line(f"line {i} " + "y" * 300)
    log.write(b"partial ")
    log.write(b"line\nnext")  # a line may arrive in pieces
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["x.log", "x.log.1", "x.log.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    oldest_first = [tmp_path / "x.log.2", tmp_path / "x.log.1", tmp_path / "x.log"]
    lines = [line for f in oldest_first for line in f.read_bytes().splitlines()]
    assert max(len(line) for line in lines) == 100 and lines[-3].endswith(b"...[cut]")
    assert lines[-2:] == [b"partial line", b"next"]
    assert b"line 499 " in b"\n".join(lines)


def test_log_receiver_counts_refusals_and_writes_them_without_secrets(tmp_path: Path) -> None:
    sink = RotatingLog(tmp_path / "door.log")
    receiver = LogReceiver(tmp_path / "log.sock", sink)
    try:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        entry = '{"reason":"auth","status":"401","method":"GET","uri":"/v2","client":"10.0.0.9","key":""}'
        for _ in range(3):
            sender.sendto(
                f"<190>Dec  6 17:00:00 {REFUSAL_TAG}: {entry}".encode(), str(receiver.socket_path)
            )
        sender.sendto(
            b"<187>Dec  6 17:00:01 dmfn_door: upstream timed out", str(receiver.socket_path)
        )
        sender.close()
        deadline = time.monotonic() + 5
        while receiver.counts().get("auth", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.counts() == {"auth": 3}
    finally:
        receiver.close()
    text = (tmp_path / "door.log").read_text()
    assert text.count("refused auth: 401 GET /v2 client=10.0.0.9 key=-") == 3
    assert "upstream timed out" in text
    assert not (tmp_path / "log.sock").exists()


def test_service_metrics_are_prometheus_text() -> None:
    text = render_service_metrics(True, {"auth": 2, 'we"ird': 1}, {"worker_replaced": 1}, 3)
    assert "dmfn_ready 1" in text
    assert 'dmfn_refused_requests_total{reason="auth"} 2' in text
    assert 'dmfn_refused_requests_total{reason="we\\"ird"} 1' in text
    assert 'dmfn_supervisor_events_total{kind="worker_replaced"} 1' in text
    assert "dmfn_api_keys 3" in text
    assert "dmfn_api_keys" not in render_service_metrics(False, {}, {}, None)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_child_outlives_the_thread_that_asked_for_it_but_not_the_process() -> None:
    """Defect 5's cause: PR_SET_PDEATHSIG fires when the forking *thread* exits. A child started
    by a short-lived thread died with it; through the spawner it lives until the process ends."""
    spawner = Spawner()
    started: dict[str, subprocess.Popen] = {}

    def start(name: str, popen) -> None:
        started[name] = popen(["sleep", "60"], preexec_fn=child_setup(), start_new_session=True)

    try:
        for name, popen in (("direct", subprocess.Popen), ("spawner", spawner.popen)):
            thread = threading.Thread(target=start, args=(name, popen))
            thread.start()
            thread.join()  # the thread that asked is gone now
        time.sleep(0.5)
        assert not _alive(started["direct"].pid), "the death signal did not fire: test is void"
        assert _alive(started["spawner"].pid)
    finally:
        for process in started.values():
            process.kill()
            process.wait()
        spawner.close()


def test_a_dead_predecessor_is_cleared_and_a_live_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = subprocess.Popen(
        ["bash", "-c", "exec -a nginx-left-behind sleep 60"], start_new_session=True
    )
    run_dir = tmp_path / "dmfn-serve-old"
    run_dir.mkdir()
    state = RunState("127.0.0.1", (1, 2, 3), pid=dead.pid, run_dir=str(run_dir))
    state.children = {str(leftover.pid): "nginx"}
    time.sleep(0.2)
    state.save()
    try:
        said = clear_predecessor("127.0.0.1", (1, 2, 3))
        assert said is not None and f"pid {leftover.pid}" in said
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        assert not run_dir.exists() and not state.path.exists()
        assert clear_predecessor("127.0.0.1", (1, 2, 3)) is None
        running = subprocess.Popen(["bash", "-c", "exec -a 'python -m dmfn.cli serve' sleep 60"])
        time.sleep(0.2)
        RunState("127.0.0.1", (1, 2, 3), pid=running.pid).save()
        with pytest.raises(RuntimeError, match=f"another dmfn serve \\(pid {running.pid}\\)"):
            clear_predecessor("127.0.0.1", (1, 2, 3))
        running.kill()
        running.wait()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_port_owner_names_the_process(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert f"pid {os.getpid()}" in port_owner(sock.getsockname()[1])


def test_the_shared_memory_library_makes_regions_owner_only(tmp_path: Path) -> None:
    """What boost.interprocess does in Triton's python backend: shm_open, then fchmod(0644)."""
    library = shm_private_library()
    if library is None:
        pytest.skip("the extension was built without serving/native/shm_private.cpp")
    name = f"/dmfn_test_{os.getpid()}"
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"fd = libc.shm_open({name.encode()!r}, os.O_CREAT | os.O_RDWR, 0o644)\n"
        "assert fd >= 0\n"
        "assert libc.fchmod(fd, 0o644) == 0\n"
        f"print(oct(os.stat('/dev/shm{name}').st_mode & 0o777))\n"
        f"libc.shm_unlink({name.encode()!r})\n"
    )
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    preloaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "LD_PRELOAD": str(library)},
    )
    assert plain.stdout.strip() == "0o644", plain.stderr
    assert preloaded.stdout.strip() == "0o600", preloaded.stderr


def test_worker_records_explain_a_death(tmp_path: Path) -> None:
    recorder = WorkerRecorder("preprocess_0_1", str(tmp_path))
    assert recorder.active
    recorder.request(2, 123456)
    recorder.request(1, 6912)  # rewritten in place
    recorder.close()
    record = parse_request_record(last_request_file(tmp_path, "preprocess_0_1").read_bytes())
    assert record is not None and record[1:] == (1, 6912)
    assert len(format_request_record(1, 2**40, 0.0)) == 80
    seen = WorkerSighting(42, "S", 300 * 2**20, time.monotonic() - 7, time.monotonic())
    text = explain_death("preprocess_0_1", seen, tmp_path)
    assert "pid 42" in text and "300 MiB" in text and "1 study of 6,912 voxels" in text
    assert "SIGKILL" in text  # no fatal-signal record
    assert not WorkerRecorder("x", None).active  # outside dmfn serve: nothing recorded
