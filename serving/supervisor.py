"""The supervisor of ``dmfn serve``: health checks that tell the truth, and repairs.

Every ``check_interval_s`` (0.5 s) it looks at the processes, and a canary thread sends a small
valid study through the pipeline every ``canary_interval_s`` (1 s):

- **a worker died** (a python-backend stub is gone; Triton 2.51 never replaces one): the death
  is explained from what is known (the worker's fatal-signal record, its last request, its
  last memory reading; :mod:`dmfn.contract.workers`), and Triton is replaced;
- **a worker is stopped** (state T: SIGSTOP, a debugger): readiness turns false at once; it turns
  true again when the worker runs, and Triton is replaced if it stays stopped for
  ``repair_after_s``;
- **the pipeline stalls**: a canary unanswered for ``stall_timeout_s`` while no other request
  completed either (a hung worker; a slow canary under load is not a stall) turns readiness
  false, and a stall of ``repair_after_s`` gets Triton replaced;
- **Triton exited**: replaced; **nginx died**: its process group is killed (a killed master
  leaves workers holding the ports), it is started again, and the restart is verified (ports
  open, workers running) before it is reported;
- **the keys file changed**: the keys are reloaded (a bad file keeps the old ones, with an event).

Replacing Triton: a new Triton starts in a new folder of the run folder, answers a canary, the
front door switches to it (nginx reloads without dropping connections), and the old one drains
and stops. Readiness is false meanwhile. (Reloading just the model through Triton's repository
API was tried first: with a dead stub, Triton 2.51 can block the reload for its 30 s stub
timeout and then never finishes unloading the old instance.) A replacement counts toward the
crash-loop budget (``max_restarts``) only if the Triton it replaces served less than
``stable_after_s``; so a single flake after a stable run costs nothing, and a crash loop ends
the service with a failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dmfn.contract import schema as S
from dmfn.contract.server import ServerContract
from dmfn.contract.workers import crash_file, last_request_file, parse_request_record

from .auth import file_stamp
from .canary import send_canary
from .config import MODEL_NAMES
from .frontdoor import FrontDoorError
from .processes import kill_marked, live_stubs, remove_shm_regions
from .triton import TritonError, TritonServer

if TYPE_CHECKING:
    from .service import DmfnService
    from .settings import ServiceConfig

log = logging.getLogger("dmfn.serve")

#: Process states of a worker that does not run: stopped by a signal, or by a tracer.
STOPPED_STATES = ("T", "t")


@dataclass
class WorkerSighting:
    """What the supervisor last saw of a worker: pid, state letter, resident bytes, when."""

    pid: int
    state: str
    rss_bytes: int
    first_seen: float
    last_seen: float


def _rss_bytes(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def explain_death(instance: str, seen: WorkerSighting | None, state_dir: Path | None) -> str:
    """A sentence on a dead worker from what is known: its fatal-signal record, its last memory
    reading, and the request it was processing."""
    parts = [f"worker {instance}" + (f" (pid {seen.pid})" if seen else "") + " died"]
    if seen is not None:
        parts[0] += f" after {time.monotonic() - seen.first_seen:.0f} s"
    fatal = ""
    if state_dir is not None:
        with contextlib.suppress(OSError):
            text = crash_file(state_dir, instance).read_text(errors="replace").strip()
            fatal = text.splitlines()[0] if text else ""
    if fatal:
        parts.append(f"it reported: {fatal}")
    else:
        parts.append(
            "it left no fatal-signal record: it was killed by SIGKILL (the kernel's "
            "out-of-memory killer sends that) or exited by itself"
        )
    if seen is not None:
        parts.append(f"last seen using {seen.rss_bytes / 2**20:.0f} MiB")
    if state_dir is not None:
        record = None
        with contextlib.suppress(OSError):
            record = parse_request_record(last_request_file(state_dir, instance).read_bytes())
        if record is not None:
            when, studies, voxels = record
            parts.append(
                f"its last request: {studies} stud{'y' if studies == 1 else 'ies'} of "
                f"{voxels:,} voxels in all, started {time.time() - when:.1f} s before"
            )
        else:
            parts.append("it had not received a request")
    return "; ".join(parts)


class Supervisor:
    """Checks and repairs of one :class:`~dmfn.serving.service.DmfnService` (see the module
    docstring). :meth:`check_once` is one round; :meth:`start` runs rounds in a thread."""

    def __init__(self, service: DmfnService) -> None:
        self.service = service
        self._thread: threading.Thread | None = None
        self._canary_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._retiring: list[threading.Thread] = []
        self._sightings: dict[str, WorkerSighting] = {}
        #: Reason -> sentence: why readiness is false now (empty: healthy).
        self.unhealthy: dict[str, str] = {}
        self._unhealthy_since: dict[str, float] = {}
        self._quick_failures = 0
        self._generation_started = time.monotonic()
        # canary state, guarded by _canary_lock
        self._canary_lock = threading.Lock()
        self._canary_sent: float | None = None
        self._canary_generation = -1
        self._canary_progress: int | None = None
        self.last_canary_s: float | None = None
        #: Set by SIGHUP (dmfn serve): reload the keys at the next check.
        self.reload_requested = False
        #: Failed audit writes already reported by an event.
        self._audit_failures = 0

    @property
    def config(self) -> ServiceConfig:
        return self.service.config

    # ------------------------------------------------------------------ Triton reads
    def _get(self, path: str, timeout_s: float = 30.0) -> tuple[int, bytes]:
        triton = self.service.triton
        if triton is None:
            return 0, b"no Triton"
        return triton.get(path, timeout_s)

    def read_expected_instances(self) -> dict[str, list[str]]:
        """Model -> names of its python-backend instances (``preprocess_0_1``), from Triton."""
        out: dict[str, list[str]] = {}
        for model in MODEL_NAMES:
            status, body = self._get(f"/v2/models/{model}/config")
            if status != 200:
                raise TritonError(f"cannot read the config of model {model!r} ({status})")
            config = json.loads(body)
            if config.get("backend") != "python":
                continue
            names = []
            for g, group in enumerate(config.get("instance_group", [])):
                base = group.get("name") or f"{model}_{g}"
                names += [f"{base}_{i}" for i in range(int(group.get("count", 1)))]
            out[model] = names
        return out

    def read_contract(self) -> ServerContract:
        status, body = self._get(f"/v2/models/{S.PIPELINE_MODEL}/config")
        if status != 200:
            raise TritonError(f"cannot read the config of {S.PIPELINE_MODEL} ({status})")
        return ServerContract.from_parameters(json.loads(body).get("parameters", {}))

    def completed_requests(self) -> int | None:
        """Requests the pipeline has answered successfully (Triton's statistics), or None when
        Triton does not answer within half a second."""
        status, body = self._get(f"/v2/models/{S.PIPELINE_MODEL}/stats", timeout_s=0.5)
        if status != 200:
            return None
        try:
            stats = json.loads(body)["model_stats"]
            return int(sum(int(m["inference_stats"]["success"]["count"]) for m in stats))
        except (ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ canary
    def canary_once(self, triton: TritonServer | None = None, timeout_s: float = 60.0) -> bool:
        """One canary (:mod:`~dmfn.serving.canary`) on ``triton`` (default: the current Triton);
        True if it answered with finite probabilities."""
        triton = triton or self.service.triton
        contract = self.service.contract
        if triton is None or contract is None:
            return False
        return send_canary(triton, contract, timeout_s)

    def _canary_loop(self) -> None:
        interval = self.config.canary_interval_s
        while not self._stop.wait(interval):
            with self.service.lock:  # a replacement holds it: never probe a Triton still starting
                generation, triton = self.service.generation, self.service.triton
            if triton is None or self.service.stopping:
                continue
            with self._canary_lock:
                self._canary_sent = time.monotonic()
                self._canary_generation = generation
                self._canary_progress = self.completed_requests()
            t0 = time.monotonic()
            ok = self.canary_once(triton)
            with self._canary_lock:  # never held together with the service's lock
                current = self._canary_generation == generation
                if current:
                    self._canary_sent = None
            if not current or self._stop.is_set():
                continue
            with self.service.lock:
                if generation != self.service.generation or self.service.stopping:
                    continue
                if ok:
                    self.last_canary_s = time.monotonic() - t0
                    self._clear("stalled")
                else:
                    self._mark("stalled", "the pipeline failed a canary request")

    def _check_stall(self) -> None:
        with self._canary_lock:
            sent, generation, progress = (
                self._canary_sent,
                self._canary_generation,
                self._canary_progress,
            )
        if sent is None or generation != self.service.generation:
            return
        waited = time.monotonic() - sent
        if waited < self.config.stall_timeout_s:
            return
        now_done = self.completed_requests()
        if progress is not None and now_done is not None and now_done > progress:
            return  # slow, not stuck: other requests completed meanwhile
        self._mark(
            "stalled",
            f"the pipeline has not answered a canary request for {waited:.0f} s and completed "
            "no other request",
        )

    # ------------------------------------------------------------------ readiness
    def _mark(self, reason: str, message: str) -> None:
        if reason not in self.unhealthy:
            self._unhealthy_since[reason] = time.monotonic()
            self.service.event("not_ready", f"not ready: {message}")
        self.unhealthy[reason] = message
        self.service.set_ready(False)

    def _clear(self, reason: str) -> None:
        if self.unhealthy.pop(reason, None) is not None:
            self._unhealthy_since.pop(reason, None)
            if not self.unhealthy:
                self.service.event("ready_again", f"ready again ({reason} is over)")
        if not self.unhealthy and not self.service.stopping:
            self.service.set_ready(True)

    # ------------------------------------------------------------------ repairs
    def replace_triton(self, kind: str, why: str) -> None:
        """Start a new Triton, switch the front door to it, retire the old one (see the module
        docstring); ``kind`` names the event."""
        service, config = self.service, self.config
        service.set_ready(False)
        served = time.monotonic() - self._generation_started
        self._quick_failures = self._quick_failures + 1 if served < config.stable_after_s else 0
        if self._quick_failures > config.max_restarts:
            service.fail(
                f"{why}; Triton was replaced {self._quick_failures - 1} times in a row, each "
                f"after serving less than {config.stable_after_s:.0f} s: giving up"
            )
            return
        old, old_prefix = service.triton, service.generation_prefix()
        t0 = time.monotonic()
        service.next_generation()
        try:
            new = service.new_triton()
            new.start()
            service.triton = new
            service.record_children()
            new.wait_ready(config.ready_timeout_s)
            service.expected_instances = self.read_expected_instances()
            if not self.canary_once():
                raise TritonError("the new Triton did not answer the canary request")
            assert service.front is not None
            service.front.reconfigure(service.front_config())
        except (TritonError, ValueError, FrontDoorError) as err:
            service.fail(f"{why}; starting a new Triton failed: {err}")
            return
        self._generation_started = time.monotonic()
        self._sightings.clear()
        self.unhealthy.clear()
        self._unhealthy_since.clear()
        if old is not None:
            thread = threading.Thread(
                target=self._retire, args=(old, old_prefix), name="dmfn-retire", daemon=True
            )
            thread.start()
            self._retiring.append(thread)
        service.set_ready(True)
        service.event(kind, f"{why}; a new Triton took over in {time.monotonic() - t0:.1f} s")

    def _retire(self, old: TritonServer, prefix: str) -> None:
        """Stop a replaced Triton once the front door no longer uses it, then remove what its
        dead workers left (processes, shared memory)."""
        front = self.service.front
        if front is not None:
            front.wait_old_workers(self.config.drain_timeout_s)
        code = old.stop(timeout_s=30.0)
        log.info("replaced Triton stopped (exit code %s)", code)
        kill_marked(prefix)
        remove_shm_regions(prefix)

    def join_retiring(self) -> None:
        for thread in self._retiring:
            thread.join(timeout=60.0)
        self._retiring.clear()

    def _restart_front_door(self) -> None:
        service = self.service
        front = service.front
        assert front is not None
        code = front.process.returncode if front.process is not None else None
        service.set_ready(False)
        front.kill_group()
        try:
            front.start()
        except FrontDoorError as err:
            service.fail(f"the front door (nginx) died and could not be restarted: {err}")
            return
        service.record_children()
        if not self.unhealthy:
            service.set_ready(True)
        service.event(
            "front_door_restarted",
            f"the front door (nginx) died (exit code {code}); restarted it, its ports answer",
        )

    def dead_instances(self) -> dict[str, list[str]]:
        """Model -> its python-backend instances that have no live worker process now."""
        triton = self.service.triton
        if triton is None or triton.process is None:
            return {}
        alive = live_stubs(triton.process.pid)
        missing = {
            model: [n for n in names if n not in alive]
            for model, names in self.service.expected_instances.items()
        }
        return {m: names for m, names in missing.items() if names}

    def _check_workers(self, triton: TritonServer) -> bool:
        """Dead and stopped workers; True when Triton was replaced."""
        assert triton.process is not None
        stubs = live_stubs(triton.process.pid)
        now = time.monotonic()
        stopped, dead = [], []
        for names in self.service.expected_instances.values():
            for name in names:
                proc = stubs.get(name)
                if proc is None:
                    dead.append(name)
                    continue
                seen = self._sightings.get(name)
                if seen is None or seen.pid != proc.pid:
                    seen = WorkerSighting(proc.pid, proc.state, 0, now, now)
                    self._sightings[name] = seen
                seen.state, seen.last_seen = proc.state, now
                seen.rss_bytes = _rss_bytes(proc.pid) or seen.rss_bytes
                if proc.state in STOPPED_STATES:
                    stopped.append(name)
        if dead:
            state_dir = triton.worker_state_dir
            why = " | ".join(explain_death(n, self._sightings.get(n), state_dir) for n in dead)
            self.replace_triton("worker_replaced", why)
            return True
        if stopped:
            self._mark("stopped", f"worker(s) {', '.join(stopped)} stopped (not running)")
        else:
            self._clear("stopped")
        return False

    def _check_keys(self) -> None:
        if self.reload_requested:
            self.reload_requested = False
            self.reload_keys()
            return
        path = self.config.api_keys
        if path is not None and file_stamp(Path(path)) != self.service.keys_stamp:
            self.reload_keys()

    def reload_keys(self) -> None:
        """Reload the keys file now (SIGHUP, or the file changed); an event says the outcome."""
        try:
            self.service.event("keys_reloaded", self.service.reload_keys())
        except (ValueError, FrontDoorError) as err:
            self.service.event("keys_reload_failed", f"{err}; the previous keys stay in force")

    def check_once(self) -> None:
        """One round of the checks and repairs (the thread calls it in a loop)."""
        service = self.service
        with service.lock:
            triton = service.triton
            if service.stopping or triton is None:
                return
            process = triton.process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                self.replace_triton("triton_restarted", f"Triton exited on its own (code {code})")
                return
            if service.front is not None and not service.front.running():
                self._restart_front_door()
                if service.stopping:
                    return
            if self._check_workers(triton):
                return
            if self.config.canary_interval_s is not None:
                self._check_stall()
            for reason in ("stopped", "stalled"):
                since = self._unhealthy_since.get(reason)
                if since is not None and time.monotonic() - since >= self.config.repair_after_s:
                    self.replace_triton(
                        "worker_replaced",
                        f"{self.unhealthy[reason]} for {time.monotonic() - since:.0f} s",
                    )
                    return
            self._check_keys()
            self._check_audit()

    def _check_audit(self) -> None:
        """An event when the models failed to write audit lines since the last check."""
        failures = self.service.audit_failures()
        if failures is not None and failures > self._audit_failures:
            where = (self.service.audit_env or {}).get("DMFN_AUDIT_LOG", "the audit file")
            self.service.event(
                "audit_write_failed",
                f"{failures - self._audit_failures} audit line(s) could not be written to "
                f"{where} ({failures} in all; the predictions were answered; see triton.log)",
            )
            self._audit_failures = failures

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stop.wait(self.config.check_interval_s):
            try:
                self.check_once()
            except Exception as err:  # the supervisor must outlive any one check
                log.exception("supervisor check failed: %s", err)

    def start(self) -> None:
        self._generation_started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dmfn-supervisor", daemon=True)
        self._thread.start()
        if self.config.canary_interval_s is not None:
            self._canary_thread = threading.Thread(
                target=self._canary_loop, name="dmfn-canary", daemon=True
            )
            self._canary_thread.start()

    def stop(self) -> None:
        """Stop the rounds. A canary still waiting on a stuck pipeline is left to fail when
        Triton stops (its thread is a daemon and its answer is ignored)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=120.0)
        if (
            self._canary_thread is not None
            and self._canary_thread is not threading.current_thread()
        ):
            self._canary_thread.join(timeout=1.0)
