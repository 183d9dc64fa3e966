"""Task queries kept within the provider's rate, without spacing out the ones due together."""

from __future__ import annotations

import random

from services.provider.polling import Pacer


class Clock:
    """A clock the test moves; each sleep is recorded as the moment its call goes out."""

    def __init__(self) -> None:
        self.now = 100.0
        self.asked: list[float] = []
        self.starts: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.starts[-1] += seconds

    async def call(self, pacer: Pacer) -> None:
        self.asked.append(self.now)
        self.starts.append(self.now)
        await pacer.wait()


async def test_queries_due_together_go_out_at_once_up_to_the_rate_then_wait_a_window() -> None:
    clock = Clock()
    pacer = Pacer(20, clock, clock.sleep)
    for _ in range(21):
        await clock.call(pacer)
    assert clock.starts[:20] == [100.0] * 20, "queries due together, up to the rate, must not queue"
    assert clock.starts[20] == 101.0


async def test_no_second_ever_holds_more_queries_than_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(20, clock, clock.sleep)
    rng = random.Random(7)
    for _ in range(2000):
        clock.now += rng.choice([0.0, 0.0, 0.001, 0.01, 0.2])
        await clock.call(pacer)
    starts = clock.starts
    assert starts == sorted(starts), "queries go out in the order they asked"
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(starts, starts[20:], strict=False))
    # Each waits only for the query 20 before it to leave the second, or not at all.
    expected = [
        max(asked, starts[k - 20] + 1.0) if k >= 20 else asked
        for k, asked in enumerate(clock.asked)
    ]
    assert starts == expected
    assert any(s > a for s, a in zip(starts, clock.asked, strict=True)), "the rate was reached"


async def test_a_rate_under_one_a_second_spaces_queries_evenly() -> None:
    clock = Clock()
    pacer = Pacer(0.5, clock, clock.sleep)
    for _ in range(3):
        await clock.call(pacer)
    assert clock.starts == [100.0, 102.0, 104.0]


async def test_a_fractional_rate_is_kept_over_its_window() -> None:
    clock = Clock()
    pacer = Pacer(2.5, clock, clock.sleep)
    for _ in range(5):
        await clock.call(pacer)
    assert clock.starts == [100.0, 100.0, 100.8, 100.8, 101.6]


async def test_a_rate_of_zero_never_waits() -> None:
    clock = Clock()
    pacer = Pacer(0, clock, clock.sleep)
    for _ in range(100):
        await clock.call(pacer)
    assert clock.starts == [100.0] * 100
