"""When to ask DashScope: the poll rhythm after a submit, and the spacing of queries."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

#: The official SDK's poll rhythm: 1, 1, 2, 2, 2, 4, 4, 4, then 5 s for ever.
POLL_SCHEDULE_S = (1, 1, 2, 2, 2, 4, 4, 4)
POLL_STEADY_S = 5


def poll_delays(scale: float = 1.0) -> Iterator[float]:
    for delay in itertools.chain(POLL_SCHEDULE_S, itertools.repeat(POLL_STEADY_S)):
        yield delay * scale


class PollPlanner:
    """When to poll a task just submitted: at the duration recent tasks took, then in short
    steps, then the SDK's rhythm. A slot is held until completion is *seen*, so polling
    1-4 s late leaves a paid-for concurrency slot idle; polling early wastes queries.

    Durations come from the provider's own ``submit_time``/``end_time`` where it reports
    them: the moment we *saw* completion depends on when we polled, and learning from it
    would only confirm the current guess."""

    STEPS = 12
    SLACK = 0.005
    """The first poll waits this fraction past the expected end. The provider's own clock
    times the task, and the submit's and the poll's transit cancel out, so only the
    task's own jitter needs covering: the steps after it do that."""
    STEP = 0.02
    """Later polls come in steps of this fraction of the expected duration."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.expected_s: float | None = None

    def observe(self, duration_s: float) -> None:
        previous = self.expected_s
        self.expected_s = duration_s if previous is None else 0.8 * previous + 0.2 * duration_s

    def delays(self, elapsed_s: float | None) -> Iterator[float]:
        """Sleeps between polls; ``elapsed_s`` is the time since submit (None: unknown)."""
        expected = self.expected_s
        if elapsed_s is None or expected is None:
            yield 0.0  # the SDK queries at once, then sleeps
            yield from poll_delays(self.scale)
            return
        yield max(0.0, expected * (1 + self.SLACK) - elapsed_s)
        step = max(0.01, expected * self.STEP)
        for _ in range(self.STEPS):
            yield step
        yield from poll_delays(self.scale)


class Pacer:
    """Keeps this process's calls within ``rate_per_s``: at most ``burst`` (the rate, at
    least 1) in any window of ``burst / rate_per_s`` seconds, so at most 20 in any second
    at DashScope's 20 queries/s. Calls that fall due together go out together: spaced
    evenly, the polls of tasks that ended together waited 50 ms each behind one another,
    idling their paid slots (docs/ARCHITECTURE.md). 0 lifts the limit."""

    def __init__(
        self,
        rate_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.burst = max(1, int(rate_per_s)) if rate_per_s > 0 else 0
        self.window = self.burst / rate_per_s if rate_per_s > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque(maxlen=max(1, self.burst))
        """When each of the last ``burst`` calls went, or will go, out: in order, since
        each waits for the one ``burst`` places before it to leave the window."""

    async def wait(self) -> None:
        if not self.burst:
            return
        now = self._clock()
        start = now
        if len(self._starts) == self.burst:
            start = max(now, self._starts[0] + self.window)
        self._starts.append(start)
        if start > now:
            await self._sleep(start - now)
