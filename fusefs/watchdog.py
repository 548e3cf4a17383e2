"""Request timeouts: a request that burns too much CPU is abandoned with EIO.

Every loop in a driver is bounded by the image's own limits, but a bound of "the number of
clusters" can still be seconds of Python on a crafted image, and a driver bug can loop.
The daemon serves one request at a time, so one such request would stall the mount.

The watchdog limits the CPU time of each request (``-o request_timeout=``, seconds):

* a profiling timer (``ITIMER_PROF``, armed once) sends SIGPROF every ``tick`` of the
  process's CPU time; nothing is done per request but two attribute stores, so the
  watchdog costs no system call on the hot path;
* the handler runs in the serving thread between two bytecodes; when that thread has
  spent more than the budget inside the same request (its own CPU clock, so the codec
  worker threads do not count), the handler raises :class:`RequestTimeout` right there;
* the exception unwinds the driver's frames (running their ``finally`` blocks) up to the
  request wrapper, which logs it and answers EIO. The daemon goes on with the next one.

An idle daemon uses no CPU, so it gets no signals. The timer is armed before the seccomp
filter is installed (setitimer is not on the allowlist); only the delivery is needed later.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

#: Default CPU budget of one request, in seconds.
DEFAULT_TIMEOUT = 5.0
#: Longest interval between two checks.
MAX_TICK = 0.1


class RequestTimeout(BaseException):
    """Raised inside a request that overran its budget.

    A BaseException, so that no ``except Exception`` in a driver can swallow it.
    """


class RequestWatchdog:
    """Abandons any guarded section that uses more than ``budget`` seconds of CPU.

    A ``budget`` of 0 disables it (:meth:`arm` does nothing; begin/end stay cheap).
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.tick = min(MAX_TICK, budget / 4)
        self.active = False
        self.serial = 0
        self.what = ""
        self._watched_serial = -1
        self._watched_since = 0.0

    def arm(self) -> None:
        """Install the handler and start the timer (before the seccomp filter)."""
        if self.budget <= 0:
            return
        signal.signal(signal.SIGPROF, self._on_tick)
        signal.siginterrupt(signal.SIGPROF, False)  # restart interrupted system calls
        signal.setitimer(signal.ITIMER_PROF, self.tick, self.tick)

    def begin(self, what: str = "request") -> None:
        self.what = what
        self.serial += 1
        self.active = True

    def end(self) -> None:
        self.active = False

    def _on_tick(self, signum: int, frame: FrameType | None) -> None:
        if not self.active:
            return
        now = time.thread_time()
        if self._watched_serial != self.serial:
            # First tick inside this section: start its clock (it started < 1 tick ago).
            self._watched_serial, self._watched_since = self.serial, now
            return
        if now - self._watched_since + self.tick > self.budget:
            self.active = False
            raise RequestTimeout(
                f"{self.what} abandoned after {self.budget:g} s of CPU (request_timeout)"
            )
