"""Micro-batching: concurrent requests queue up; one worker thread runs everything queued so far as one batch.

16 concurrent clients then cost about one forward pass instead of 16, and the event loop keeps
accepting requests while the model computes.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFull(Exception):
    """More requests wait than the queue may hold."""


class MicroBatcher:
    """Collects concurrent requests into batches for one worker thread that runs the model."""

    def __init__(self, predict_proba, max_batch: int, max_queue: int, wait_s: float = 0.0):
        self._predict = predict_proba
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnist-cnn-model")
        self.batches = self.images = 0  # counters for /v1/model and the logs

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (10,) for one (28, 28) float32 image; raises QueueFull when too many wait."""
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = [await queue.get()]
            if self.wait_s and queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.wait_s)
            while len(items) < self.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            items = [it for it in items if not it[1].done()]  # clients that went away
            if not items:
                continue
            batch = np.stack([it[0] for it in items])  # (B, 28, 28)
            try:
                probs = await loop.run_in_executor(self._executor, self._predict, batch)
            except Exception as exc:  # a bug or a broken model: every waiting request gets it, the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(items)
            for (_, future), p in zip(items, probs, strict=True):
                if not future.done():
                    future.set_result(p)

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._task is not None:
            while not self._queue.empty():
                await asyncio.sleep(0.005)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)
