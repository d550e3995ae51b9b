"""Stopping a run cleanly on a signal: SIGINT/SIGTERM set a flag the training loop checks after
each step (it then saves a checkpoint and stops); a second SIGINT aborts at once."""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts at once.
    A context manager: the previous handlers come back on exit. Outside the main thread (where
    Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
