"""Admission to decoding uploads: how many at once (CPU) and how many pixels together (memory), with a bounded wait.

A decode's transient memory grows with the image's pixel count, whatever its file size: a 680-byte lossless
WebP of 16 megapixels takes about 250 MB while Pillow decodes it (libwebp's canvases, then Pillow's copy).
Counting the pixels each upload's header declares bounds what concurrent decodes hold together; an upload
that cannot get in within the wait is refused (the service answers 503 + Retry-After) instead of queueing
for longer than its client waits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class DecodeRefused(Exception):
    """No decode slot and pixel budget came free within the wait."""


class DecodeGate:
    """At most ``slots`` decodes at once, holding at most ``pixels`` pixels together; waits of at most ``wait_s``.

    Uploads get in first come, first served, so a large image is never passed for ever by small ones; one of
    more pixels than the budget (possible only when the budget is below the service's pixel limit) decodes alone.
    Each waiter is a future resolved in turn as decodes finish: no lock for hundreds of waiters to queue for, so
    a wait ends on time however many wait.
    """

    def __init__(self, slots: int, pixels: int, wait_s: float):
        self.slots, self.pixels, self.wait_s = slots, pixels, wait_s
        self.decoding = self.held = 0  # decodes running now, and the pixels they hold
        self._line: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @contextlib.asynccontextmanager
    async def admit(self, pixels: int):
        """Hold a slot and ``pixels`` of the budget while the body runs; DecodeRefused after ``wait_s``."""
        cost = min(max(pixels, 1), self.pixels)
        if not self._line and self._fits(cost):
            self._take(cost)
        else:
            await self._wait(cost)
        try:
            yield
        finally:
            self._release(cost)

    async def _wait(self, cost: int) -> None:
        entry = (cost, asyncio.get_running_loop().create_future())
        self._line.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await entry[1]
        except TimeoutError:
            if entry[1].done() and not entry[1].cancelled():  # let in just as the wait ran out: go on
                return
            with contextlib.suppress(ValueError):
                self._line.remove(entry)
            self._let_in()  # it may have been first in line, holding back others that fit
            raise DecodeRefused from None
        except asyncio.CancelledError:  # the request went away (a client that disconnected)
            if entry[1].done() and not entry[1].cancelled():  # let in just before: give the place back
                self._release(cost)
            raise

    def _release(self, cost: int) -> None:
        self.decoding, self.held = self.decoding - 1, self.held - cost
        self._let_in()

    def _let_in(self) -> None:
        while self._line:
            cost, future = self._line[0]
            if future.done():  # its request went away
                self._line.popleft()
                continue
            if not self._fits(cost):
                return
            self._line.popleft()
            self._take(cost)
            future.set_result(None)

    def _fits(self, cost: int) -> bool:
        return self.decoding < self.slots and self.held + cost <= self.pixels

    def _take(self, cost: int) -> None:
        self.decoding, self.held = self.decoding + 1, self.held + cost
