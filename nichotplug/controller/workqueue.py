"""A deduplicating, rate-limited work queue of object keys, after client-go's workqueue.

Keys are ``namespace/name`` strings. The queue promises what a level-triggered reconciler needs:

- an item queued twice before a worker takes it is processed once (it is "dirty" only once);
- an item re-added while a worker processes it is not handed to a second worker at the same time, but
  is queued again when the first worker calls :meth:`WorkQueue.done`, so the newest state is seen;
- failures back off per item, exponentially and capped (:meth:`add_rate_limited`), until
  :meth:`forget` says the item succeeded;
- delayed adds (:meth:`add_after`) keep only the earliest pending timer per item.

Everything runs on one event loop; no locks are needed because no method awaits while it changes state.
"""

from __future__ import annotations

import asyncio
import collections

from nichotplug.controller import metrics


class ShutDown(Exception):
    """Raised by :meth:`WorkQueue.get` once the queue is shut down and drained of waiters."""


class WorkQueue:
    """Keys waiting for a reconcile, each at most once, with per-key exponential retry backoff."""

    def __init__(self, name: str, *, base_delay: float = 0.005, max_delay: float = 60.0) -> None:
        self.name = name
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._order: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()          # queued or waiting to be re-queued after processing
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._shut_down = False
        self._depth = metrics.WORKQUEUE_DEPTH.labels(name=name)
        self._retries = metrics.WORKQUEUE_RETRIES.labels(name=name)
        self._depth.set(0)

    def __len__(self) -> int:
        return len(self._order)

    @property
    def shutting_down(self) -> bool:
        return self._shut_down

    def add(self, key: str) -> None:
        """Queue ``key`` unless it is already queued; a key being processed is re-queued on done()."""
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._order.append(key)
        self._depth.set(len(self._order))
        self._wake_one()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier pending timer for it wins."""
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire_timer, key))

    def add_rate_limited(self, key: str) -> float:
        """Queue ``key`` after its next backoff step (base * 2**failures, capped); returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(self._base_delay * 2.0 ** min(failures, 62), self._max_delay)
        self._retries.inc()
        self.add_after(key, delay)
        return delay

    def failures(self, key: str) -> int:
        """How many rate-limited retries ``key`` has had since it last succeeded."""
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff: its last attempt succeeded (or gave up for good)."""
        self._failures.pop(key, None)

    async def get(self) -> str:
        """Wait for the next key and mark it as being processed; the caller must call done(key)."""
        while not self._order:
            if self._shut_down:
                raise ShutDown(self.name)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # We may have been woken for an item we will now never take: pass the wake-up on.
                if self._order:
                    self._wake_one()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        key = self._order.popleft()
        self._depth.set(len(self._order))
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        """Finish processing ``key``; if it was re-added meanwhile, queue it again now."""
        self._processing.discard(key)
        if key in self._dirty and not self._shut_down:
            self._order.append(key)
            self._depth.set(len(self._order))
            self._wake_one()

    def shut_down(self) -> None:
        """Stop accepting keys, drop pending ones and timers, and wake every waiting get()."""
        self._shut_down = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._order.clear()
        self._dirty.clear()
        self._depth.set(0)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _fire_timer(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
