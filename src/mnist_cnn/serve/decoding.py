"""Admission to decoding uploads: how many at once (CPU) and how many pixels together (memory), with a bounded wait.

A decode's transient memory grows with the image's pixel count, whatever its file size: a 680-byte lossless
WebP of 16 megapixels takes about 250 MB while Pillow decodes it (libwebp's canvases, then Pillow's copy).
Counting the pixels each upload's header declares bounds what concurrent decodes hold together; an upload
that cannot get in within the wait is refused (the service answers 503 + Retry-After) instead of queueing
for longer than its client waits.
"""

from __future__ import annotations

import asyncio
import contextlib


class DecodeRefused(Exception):
    """No decode slot and pixel budget came free within the wait."""


class DecodeGate:
    """At most ``slots`` decodes at once, holding at most ``pixels`` pixels together; waits of at most ``wait_s``.

    An image of more pixels than the budget (only possible when the budget is below the service's pixel limit)
    decodes alone. Waiters are woken together and the first that fits goes in: small uploads may pass a large
    one, which is then refused after ``wait_s`` rather than starved for ever.
    """

    def __init__(self, slots: int, pixels: int, wait_s: float):
        self.slots, self.pixels, self.wait_s = slots, pixels, wait_s
        self.decoding = self.held = 0  # decodes running now, and the pixels they hold
        self._changed: asyncio.Condition | None = None  # made on the event loop, at first use

    @contextlib.asynccontextmanager
    async def admit(self, pixels: int):
        """Hold a slot and ``pixels`` of the budget while the body runs; DecodeRefused after ``wait_s``."""
        cost = min(max(pixels, 1), self.pixels)
        changed = self._changed = self._changed or asyncio.Condition()
        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(lambda: self._fits(cost)), self.wait_s)
            except TimeoutError:
                raise DecodeRefused from None
            self.decoding, self.held = self.decoding + 1, self.held + cost
        try:
            yield
        finally:
            async with changed:
                self.decoding, self.held = self.decoding - 1, self.held - cost
                changed.notify_all()

    def _fits(self, cost: int) -> bool:
        return self.decoding < self.slots and self.held + cost <= self.pixels
