"""A run-level circuit breaker: stop the run when the LLM server stays unreachable.

Every :class:`~llm.client.LLMClient` of a run reports to one :class:`CircuitBreaker`:
an answer from the server (whatever its content) closes it, a request that got no
usable answer (connection refused or reset, timeout, 429, 5xx, an unreadable body)
marks it failing. While it is failing and the server is away (no answer, 429,
502-504), a call that has used up its retries keeps retrying instead of recording
its candidate as failed (the fault is the server's, not the candidate's); a request
the server answers with the same error every time (a 500 of its own) fails its
candidate after its retries. Once the server has been failing for ``open_after`` seconds
with no answer in between, the breaker opens for good: every call raises
:class:`CircuitOpen`, which is not an :class:`~llm.client.LLMError`, so no node records
it on a candidate; it goes up through the graph and the runner stops the run, to be
resumed later from its checkpoints (one of the run stops of ``llm.stops``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from llm.stops import RunStop


class CircuitOpen(RunStop):
    """The server has failed every request for longer than the breaker allows."""

    status = "server_unavailable"
    exit_code = 75  # sysexits' EX_TEMPFAIL: try again later

    def __init__(self, failing_for: float, last_error: str) -> None:
        super().__init__(
            f"the LLM server has failed every request for {failing_for:.0f} s "
            f"(last error: {last_error})"
        )
        self.failing_for = failing_for
        self.last_error = last_error


class CircuitBreaker:
    """Tracks whether the server answers; opens after ``open_after`` seconds of failures."""

    def __init__(self, open_after: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if open_after <= 0:
            raise ValueError(f"open_after must be positive, not {open_after}")
        self.open_after = open_after
        self.clock = clock
        self.failing_since: float | None = None
        """When the current run of failures began (None: the last request was answered)."""
        self.last_success = -math.inf
        self.last_error = ""
        self.failures = 0
        self._open: CircuitOpen | None = None

    def success(self) -> None:
        """The server answered (even an answer the caller cannot use)."""
        if self._open is None:
            self.failing_since = None
            self.last_success = self.clock()

    def failure(self, error: str) -> None:
        """A request got no usable answer from the server."""
        self.failures += 1
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = self.clock()

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def answered_since(self, moment: float) -> bool:
        """Whether any request was answered after ``moment`` (a ``clock()`` value)."""
        return self.last_success > moment

    def remaining(self) -> float:
        """Seconds until the breaker opens if nothing is answered (inf when closed)."""
        if self.failing_since is None:
            return math.inf
        return max(0.0, self.failing_since + self.open_after - self.clock())

    def check(self) -> None:
        """Raise :class:`CircuitOpen` once the server has failed for ``open_after`` seconds."""
        if self._open is None and self.failing_since is not None:
            failing_for = self.clock() - self.failing_since
            if failing_for >= self.open_after:
                self._open = CircuitOpen(failing_for, self.last_error)
        if self._open is not None:
            raise CircuitOpen(self._open.failing_for, self._open.last_error)

    @property
    def is_open(self) -> bool:
        try:
            self.check()
        except CircuitOpen:
            return True
        return False
