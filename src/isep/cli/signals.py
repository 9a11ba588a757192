"""SIGTERM and SIGINT end a command honestly: what `timeout`, Slurm, Kubernetes and Ray send to stop
a job must not read as a success.

While a command runs (`stop_on_signals`), both signals raise `Stopped`, a `KeyboardInterrupt`: a
fit then shuts down the way Ctrl-C does (Lightning's graceful path, the callbacks' `on_exception`),
keeps the checkpoint of its last finished epoch, and `isep.cli.main` exits 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT), as a process killed by it would. A SIGINT that the
parent ignores (a background job of a non-interactive shell) stays ignored.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []
_active: list[bool] = []  # non-empty while `stop_on_signals` is in force


class Stopped(KeyboardInterrupt):
    """The command was stopped by `signum`; `reported`: its one line was printed already."""

    def __init__(self, signum: int, reported: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.reported = signum, reported

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _stop(signum: int, frame) -> None:
    _received.append(signum)
    raise Stopped(signum)


def as_stopped(err: KeyboardInterrupt) -> Stopped:
    """isep's `Stopped` for any interrupt: a library may turn it into a plain KeyboardInterrupt (Ray
    does), whose signal is then the one received (SIGINT when none was: a Ctrl-C Python saw itself)."""
    return err if isinstance(err, Stopped) else Stopped(received() or signal.SIGINT)


def received() -> int | None:
    """The first stop signal received while the current command ran, if any."""
    return _received[0] if _received else None


def reclaim() -> None:
    """Put isep's handlers back after a library replaced them (Ray's `init` sets a SIGTERM handler
    that exits at once); only while `stop_on_signals` is in force, only in the main thread."""
    if not _active:
        return
    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _stop)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Stopped` while the block runs (in the main thread; elsewhere, as in
    a Ray worker, nothing changes); the previous handlers come back after it."""
    _received.clear()
    try:
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(s, _stop)
    except ValueError:  # not the main thread
        yield
        return
    _active.append(True)
    try:
        yield
    finally:
        _active.pop()
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
