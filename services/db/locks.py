"""Global provider slots and per-image exclusivity, as PostgreSQL session advisory locks.

Each process keeps one dedicated "keeper" connection that holds every slot and image lock
the process owns. A lock lives as long as that session, so a process that crashes (or
loses the connection) gives its slots back by itself: no lease to expire, no token to
recover, and no connection held per in-flight provider call.

Session advisory locks are re-entrant: the keeper could take the same key twice. The
process therefore remembers which slots and images it holds and never asks for them again.

Keeper calls take turns. The tries, releases and writes that queue behind the call on the
wire go out together in the next one, and so do the tries made in one turn of the event
loop (a task's image messages arrive together): a burst of messages costs a few round
trips, not several each. So the keeper also does an image's two small writes around its
submit: a try begins each image it wins (``Claim``), marking the submit as going out and
reading the task in the same statement, and the provider task id the submit got is stored
with the releases (``record_provider_task``). A stored image's release waits a little for
another call to carry it (``finished``).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from services import metrics
from services.db.engine import Database, Driver
from services.db.errors import (
    DatabaseUnavailable,
    RepositoryError,
    is_unavailable,
    translated,
    unavailable,
)
from services.db.rows import ImageRow, TaskRow, split_joined
from services.db.statements import ACTIVE_VALUES, CLAIM, RUNNING_SLOTS, SETTLE

KEEPER_SESSION = {"plan_cache_mode": "force_custom_plan"}
"""The keeper plans each call afresh. Its statements look images up by the ids they carry,
and a plan kept for good while the tables were nearly empty (on a new database, and on one
never analyzed) scanned them whole as they grew: 460 against 35 us per call in the
throughput benchmark."""
IMAGE_HELD_ELSEWHERE = -1
MAX_PAUSE_S = 0.2
LINGER_S = 0.05
"""How long the lock of an image stored for good may wait for another keeper call to carry
its release, before one goes out for it alone."""


@dataclass(frozen=True)
class Claim:
    """An image held, and its task and images as the claim found them, before it marked
    the image's submit as going out (only when the image was live at ``dispatch`` with no
    provider task yet). No task when none was named, or it is gone."""

    task: TaskRow | None
    images: list[ImageRow]


_NOTHING_READ = Claim(None, [])
_Answer = tuple[int | None, int, Claim]
"""A try's answer: the slot (None: all taken; ``IMAGE_HELD_ELSEWHERE``), the keeper
generation that holds it, and what the claim read."""


def lock_classes(namespace: str) -> tuple[int, int]:
    """The two advisory-lock key spaces (slots, images) of a namespace."""
    base = zlib.crc32(namespace.encode()) & 0x3FFFFFFF
    return base, base + 1


def _claim(rows: list[Any]) -> Claim:
    if rows[0]["id"] is None:  # no task named, or none found
        return _NOTHING_READ
    return Claim(*split_joined(rows))


class ProviderSlots:
    """At most ``size`` provider calls in flight across every process sharing the database."""

    def __init__(self, db: Database, namespace: str, size: int) -> None:
        self.db = db
        self.size = size
        self.slot_class, self.image_class = lock_classes(namespace)
        self._keeper: Driver = None
        self._generation = 0
        """Raised whenever the keeper is replaced: locks of an older one are gone already."""
        self._io = asyncio.Lock()
        self._slots: set[int] = set()
        self._images: set[int] = set()
        self._holding: dict[int, tuple[int, int]] = {}
        """The slot each held image took, and the keeper generation that holds it."""
        self._wanted: dict[int, tuple[tuple[str, int] | None, asyncio.Future[_Answer]]] = {}
        """Images waiting for a try at a slot, what to begin when it is won, and where each
        try's answer goes."""
        self._unlocks: list[tuple[int | None, int | None, int]] = []
        """Slots and images to give back, with the keeper generation that holds them."""
        self._records: list[tuple[int, str, asyncio.Future[None]]] = []
        """Provider task ids to store, and where each write's outcome goes."""
        self._released = asyncio.Event()
        self._counted: tuple[float, int] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()
        self._finished: set[int] = set()
        self._flush: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def _session(self, generation: int | None = None) -> AsyncIterator[Driver]:
        """The keeper, exclusively: local bookkeeping is read and changed only in here, so
        it always matches what the session holds. With ``generation``, only that keeper
        session (else None: it is gone, and the locks it held with it)."""
        async with self._io, translated():
            if self._keeper is not None and self._keeper.is_closed():
                self._discard_keeper()
            if generation is not None and (self._keeper is None or generation != self._generation):
                yield None
                return
            if self._keeper is None:
                self._keeper = await self.db.connect(KEEPER_SESSION)
                self._generation += 1
                self._slots.clear()  # a new session holds nothing
            try:
                yield self._keeper
            except BaseException:
                self._discard_keeper()
                raise

    def _discard_keeper(self) -> None:
        """Drop the keeper session, and with it every lock it held."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.terminate()

    async def connect(self) -> None:
        """Open the keeper session now rather than on the first message, and call the
        acquire functions once for one image with no slot to take: the first call in a
        session compiles both and prepares the statement (about 10-20 ms, paid by the first
        image otherwise)."""
        async with self._session() as keeper:
            await keeper.fetch(
                CLAIM, self.slot_class, 0, 0, [], self.image_class, [0], [None], [0], ACTIVE_VALUES
            )

    @asynccontextmanager
    async def hold(
        self, image_id: int, begin: tuple[str, int] | None = None
    ) -> AsyncIterator[Claim | None]:
        """Hold a global slot and image ``image_id`` for the length of the block (the slot
        may go back earlier, with ``free_slot``). With ``begin`` (the image's task id and
        dispatch), the image is begun as it is won (``Claim``).

        Yields None (holding nothing) when another worker already holds the image.
        """
        if image_id in self._images:
            yield None
            return
        self._images.add(image_id)
        try:
            acquired = await self._acquire(image_id, begin)
            if acquired is None:
                yield None
                return
            slot, generation, claim = acquired
            self._holding[image_id] = (slot, generation)
            metrics.SLOTS_IN_USE.inc()
            try:
                yield claim
            finally:
                held = self._take_slot(image_id)
                if image_id in self._finished and held is None:
                    self._linger(image_id, generation)
                else:
                    await self._release(held[0] if held else None, image_id, generation)
        finally:
            self._images.discard(image_id)
            self._finished.discard(image_id)

    def finished(self, image_id: int) -> None:
        """The image held in ``hold`` is stored for good. Nothing needs its lock promptly
        then (a copy of its message finds it stored), so the release rides on the next
        keeper call, for up to ``LINGER_S``, instead of taking a round trip of its own."""
        self._finished.add(image_id)

    def _linger(self, image_id: int, generation: int) -> None:
        self._unlocks.append((None, image_id, generation))
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(LINGER_S, self._flush_unlocks)

    def _flush_unlocks(self) -> None:
        self._flush = None
        if any(image is not None for _, image, _ in self._unlocks):
            self._give_back(None, None, self._generation)

    def free_slot(self, image_id: int) -> None:
        """Give back the slot of an image held in ``hold`` before the block ends, keeping
        the image: once the provider has answered for good, storing the result needs no
        slot, and a slot kept through the store idles a paid-for concurrency place. The
        release goes out in the background, beside the store."""
        slot = self._take_slot(image_id)
        if slot is not None:
            self._give_back(slot[0], None, slot[1])

    def _take_slot(self, image_id: int) -> tuple[int, int] | None:
        """Forget the slot that ``image_id`` holds: the slot and its keeper generation, or
        None when it was given back already."""
        slot = self._holding.pop(image_id, None)
        if slot is not None:
            metrics.SLOTS_IN_USE.dec()
        return slot

    async def _acquire(
        self, image_id: int, begin: tuple[str, int] | None
    ) -> tuple[int, int, Claim] | None:
        started = time.monotonic()
        pause = 0.005
        while True:
            self._released.clear()
            slot, generation, claim = await self._try(image_id, begin)
            if slot == IMAGE_HELD_ELSEWHERE:
                return None
            if slot is not None:
                metrics.SLOT_WAIT_SECONDS.observe(time.monotonic() - started)
                return slot, generation, claim
            # Every slot is taken: wait for one of ours to free, or back off for others'.
            try:
                await asyncio.wait_for(self._released.wait(), pause * (1 + random.random()))
            except TimeoutError:
                pause = min(pause * 2, MAX_PAUSE_S)

    async def _try(self, image_id: int, begin: tuple[str, int] | None) -> _Answer:
        """One try at a slot and the image. Tries queue behind the keeper's current call:
        the first to get the keeper sends every one waiting, in one round trip, and the
        others find their answer there."""
        answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        try:
            self._wanted[image_id] = (begin, answer)
            if not self._io.locked():
                # Messages delivered together start one after another in this turn of the
                # loop: let their tries join this one's call rather than queue behind it.
                await asyncio.sleep(0)
            async with self._session() as keeper:
                if not answer.done():
                    # a failed call before ours dropped it
                    self._wanted[image_id] = (begin, answer)
                    await self._send_tries(keeper)
            return answer.result()
        except BaseException:
            if self._wanted.get(image_id, (None, None))[1] is answer:
                del self._wanted[image_id]
            if not answer.cancel():  # answered by another's call, then this one gave up
                slot, generation, _ = answer.result()
                if slot is not None and slot >= 0:
                    self._give_back(slot, image_id, generation)
            raise

    async def _send_tries(self, keeper: Driver) -> None:
        wanted = dict(self._wanted)
        self._wanted.clear()
        begins = [begin or (None, None) for begin, _ in wanted.values()]
        rows = await keeper.fetch(
            CLAIM,
            self.slot_class,
            self.size,
            random.randrange(self.size),
            sorted(self._slots),
            self.image_class,
            list(wanted),
            [task_id for task_id, _ in begins],
            [dispatch for _, dispatch in begins],
            ACTIVE_VALUES,
        )
        claims = [list(group) for _, group in groupby(rows, key=lambda r: r["claim_n"])]
        for (image_id, (_, answer)), found in zip(wanted.items(), claims, strict=True):
            slot = found[0]["claim_slot"]
            granted = slot is not None and slot >= 0
            if granted:
                self._slots.add(slot)
            if not answer.cancelled():
                answer.set_result(
                    (slot, self._generation, _claim(found) if granted else _NOTHING_READ)
                )
            elif granted:  # its holder gave up while this call was on the wire
                self._give_back(slot, image_id, self._generation)

    def _give_back(self, slot: int | None, image_id: int | None, generation: int) -> None:
        task = asyncio.get_running_loop().create_task(self._release(slot, image_id, generation))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _release(self, slot: int | None, image_id: int | None, generation: int) -> None:
        """Give back a slot and an image (either may be None), with everything queued."""
        if slot is not None or image_id is not None:
            self._unlocks.append((slot, image_id, generation))
        try:
            async with self._session(generation) as keeper:
                if keeper is not None:  # else the keeper died, and the locks with it
                    await self._settle(keeper)
        except DatabaseUnavailable:
            pass  # the keeper died, and the locks with it
        finally:
            self._released.set()

    async def record_provider_task(self, image_id: int, provider_task_id: str) -> None:
        """Store the provider task id of a held image; it counts as a submit, and clears
        the submit's mark. Raises ``DatabaseUnavailable`` when it was not written."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (image_id, provider_task_id, written)
        self._records.append(entry)
        try:
            async with self._session() as keeper:
                if not written.done():
                    await self._settle(keeper)
        except BaseException as exc:
            if entry in self._records:  # never sent
                self._records.remove(entry)
            if not written.done() or not isinstance(exc, Exception):  # or cancelled
                raise
        written.result()  # written by an earlier call, or failed with it

    async def _settle(self, keeper: Driver) -> None:
        """Send every write and release queued behind the keeper's last call, in one round
        trip. Releases of an older keeper are dropped: its locks died with it."""
        records, self._records = self._records, []
        live = [u for u in self._unlocks if u[2] == self._generation]
        self._unlocks.clear()
        slots = [s for s, _, _ in live if s is not None]
        images = [i for _, i, _ in live if i is not None]
        if not records and not live:
            return
        self._slots.difference_update(slots)
        try:
            await keeper.fetch(
                SETTLE,
                self.slot_class,
                slots,
                self.image_class,
                images,
                [image_id for image_id, _, _ in records],
                [provider_task_id for _, provider_task_id, _ in records],
            )
        except BaseException as exc:
            failed: RepositoryError = (
                unavailable(exc)
                if is_unavailable(exc) or not isinstance(exc, Exception)  # or interrupted
                else RepositoryError(f"database error: {exc}")
            )
            for _, _, written in records:
                if not written.done():
                    written.set_exception(failed)
            raise
        for _, _, written in records:
            if not written.done():
                written.set_result(None)

    async def running(self, max_age_s: float = 0.0) -> int:
        """Slots held by every process, counted at most ``max_age_s`` ago. Counting scans
        the server's whole lock table, too dear to do for every log line under load."""
        now = time.monotonic()
        if self._counted is not None and now - self._counted[0] <= max_age_s:
            return self._counted[1]
        async with self.db.checkout() as conn:
            count = int(await conn.fetchval(RUNNING_SLOTS, self.slot_class) or 0)
        self._counted = (now, count)
        return count

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()  # the locks go with the session
            self._flush = None
        async with self._io:
            if self._keeper is not None:
                await self._keeper.close()
                self._keeper = None
