"""Start the service's children from one thread that outlives them.

Linux delivers PR_SET_PDEATHSIG when the *thread* that forked a child exits, not the process.
A Triton started by the supervisor thread (a replacement) therefore received SIGTERM the moment
that thread returned at shutdown, and stopped before the front door had drained: in-flight
requests got 502 and ``dmfn serve`` exited 1. Every child of a service is started by its
:class:`Spawner`, whose thread lives until the service has stopped all of them; the death
signal then fires only when the whole process dies (kill -9), which is what it is for.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_setup(
    umask: int | None = 0o077, death_signal: int = signal.SIGTERM
) -> Callable[[], None]:
    """A ``preexec_fn``: owner-only files (``umask``) and ``death_signal`` when the parent dies."""

    def setup() -> None:
        if umask is not None:
            os.umask(umask)
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(death_signal))
        except (OSError, AttributeError):
            pass

    return setup


class Spawner:
    """A thread that runs ``subprocess.Popen`` calls for other threads (see the module
    docstring). :meth:`close` only after every child it started has exited."""

    def __init__(self, name: str = "dmfn-spawner") -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except BaseException as err:  # handed to the caller
                    future.set_exception(err)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen(*args, **kwargs)``, forked by the spawner's thread."""
        if threading.current_thread() is self._thread:
            return subprocess.Popen(*args, **kwargs)
        if not self._thread.is_alive():
            raise RuntimeError("the spawner is closed")
        future: Future = Future()
        self._jobs.put((lambda: subprocess.Popen(*args, **kwargs), future))
        return future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10.0)
