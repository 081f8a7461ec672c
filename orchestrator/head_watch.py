"""Ends a driver whose Ray cluster is gone, in bounded time, with one line saying so.

Without it a driver whose head node is lost keeps retrying the GCS (Ray's own reconnect lasts
``gcs_rpc_server_reconnect_timeout_s``, 60 s by default, and a driver was seen printing GCS time-outs for 6
minutes), ignoring SIGTERM meanwhile. :class:`HeadWatch` knocks on the head's GCS port every ``interval_s``; once
it has not answered for ``RANKSTUDY_HEAD_TIMEOUT_S`` seconds (default 30), it interrupts the driver's main thread
(which unwinds like Ctrl-C: the study's lease is released, written results stay) and, should the main thread be
stuck inside Ray (a call to the lost GCS), runs the registered cleanups (:func:`on_forced_exit`: the lease) and
ends the process ``grace_s`` later. The CLI reads :func:`lost` to print the line and exit 3.
"""

from __future__ import annotations

import _thread
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

EXIT_STATUS = 3
_lost: list[str] = []  # set once, by the watch, when the head is gone
_cleanups: list[Callable[[], None]] = []  # what must happen even if the process has to leave without its main thread


def on_forced_exit(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Run ``cleanup`` (e.g. release the study's lease) before the watch ends a stuck driver; returns the function
    that unregisters it."""
    _cleanups.append(cleanup)
    return lambda: _cleanups.remove(cleanup) if cleanup in _cleanups else None


def head_timeout_s() -> float:
    try:
        return max(1.0, float(os.environ.get("RANKSTUDY_HEAD_TIMEOUT_S", "30")))
    except ValueError:
        return 30.0


def lost() -> str | None:
    """Why the driver stopped, if its cluster's head was lost: one line for the user."""
    return _lost[0] if _lost else None


def reachable(address: str, timeout_s: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class HeadWatch:
    def __init__(self, gcs_address: str, timeout_s: float | None = None, interval_s: float = 1.0,
                 grace_s: float = 10.0):
        self.address = gcs_address
        self.timeout_s = timeout_s if timeout_s is not None else head_timeout_s()
        self.interval_s, self.grace_s = interval_s, grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ray-head-watch", daemon=True)

    def start(self) -> HeadWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        last_seen = time.monotonic()
        while not self._stop.wait(self.interval_s):
            if reachable(self.address, timeout_s=min(2.0, self.interval_s * 2)):
                last_seen = time.monotonic()
                continue
            silent = time.monotonic() - last_seen
            if silent >= self.timeout_s:
                self._give_up(silent)
                return

    def _give_up(self, silent: float) -> None:
        _lost.append(f"lost the Ray cluster at {self.address}: its head has not answered for {silent:.0f} s; results "
                     "written so far are kept, re-run the same command once the cluster is back to resume")
        _thread.interrupt_main()  # KeyboardInterrupt in the main thread, which Ray lets out of ray.wait
        if self._stop.wait(self.grace_s):
            return  # the driver unwound and stopped the watch
        print(f"error: {lost()}", file=sys.stderr, flush=True)
        for cleanup in list(_cleanups):
            try:
                cleanup()
            except Exception as err:  # noqa: BLE001 - leaving anyway; say what was not cleaned up
                print(f"warning: {err}", file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)  # the main thread is stuck inside Ray: leave without it
