"""The server's transport limits: the head limits and the connection cap uvicorn's httptools protocol lacks.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), but with httptools nothing bounds a
request's head: a client may send a header of hundreds of megabytes, or open a socket and send nothing,
for ever. The protocol here refuses a head larger than ``max_header_bytes`` with 431 and closes a
connection whose head is not complete within ``header_timeout_s`` (408).

It also caps the connections itself, instead of uvicorn's ``limit_concurrency``, which answers 503 only once
a request's head is in: sockets that send nothing would hold every file descriptor meanwhile, and 1,100 of
them take a server under ``ulimit -n 1024`` off the air (accept() fails). At the cap, each new connection
closes the one that has waited longest without a request (408), so the newest clients are served; only when
every connection has a request under way is the newcomer refused (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import logging

from ..config import ServeSettings as Settings

log = logging.getLogger("mnist_cnn.serve")
FD_RESERVE = 64  # open files kept for the model, logs, the event loop and worker threads when the limit is tight
LINGER_S = 1.0  # how long a refused connection's further bytes are read and dropped before it is closed
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 32\r\n\r\nrequest header fields too large\n"  # fmt: skip
_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 16\r\n\r\nrequest timeout\n"  # fmt: skip


def uvicorn_options(settings: Settings) -> dict:
    """The keyword arguments of ``uvicorn.run`` that carry ``settings``' transport limits."""
    cap = connection_cap(settings.limit_concurrency)
    return {
        "http": limited_httptools(settings.max_header_bytes, settings.header_timeout_s, cap, settings.retry_after_s),
        "limit_concurrency": None,  # the protocol's own cap, which does not wait for a request's head
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,  # the same limit, should h11 be used
    }


def connection_cap(limit_concurrency: int) -> int:
    """``limit_concurrency``, lowered to leave FD_RESERVE of the process's open-file limit for everything else."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError):  # Windows
        return limit_concurrency
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= limit_concurrency:
        return limit_concurrency
    cap = max(1, soft - FD_RESERVE)
    log.warning("--limit-concurrency %d is lowered to %d: the open-file limit (ulimit -n) is %d", limit_concurrency, cap, soft)  # fmt: skip
    return cap


class ConnectionCap:
    """At most ``cap`` open connections: at the cap a newcomer closes the connection that has waited longest
    without a request (408); when every connection has a request under way, the newcomer is refused (503)."""

    def __init__(self, cap: int, retry_after_s: int):
        self.cap = cap
        body = b"too many connections; retry shortly\n"
        self.busy = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: {retry_after_s}"
                     f"\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
        self.waiting: dict = {}  # connections with no request under way, oldest first (a dict keeps insertion order)

    def admit(self, new, connections) -> bool:
        """Make room for ``new`` (already in ``connections``); False when there is none to make."""
        if len(connections) > self.cap:
            live = sum(1 for c in connections if not c.transport.is_closing())  # closed ones linger a moment
            if live > self.cap and not self._close_oldest_waiting():
                return False
        self.waiting[new] = None
        return True

    def idle(self, connection) -> None:
        """``connection`` waits for its next request (keep-alive): the newest of the waiting."""
        self.waiting.pop(connection, None)
        self.waiting[connection] = None

    def working(self, connection) -> None:
        """``connection`` has a request under way (or is gone): not to be closed for a newcomer."""
        self.waiting.pop(connection, None)

    def _close_oldest_waiting(self) -> bool:
        for other in self.waiting:
            if not other.transport.is_closing():
                self.waiting.pop(other)
                other.close_now(_408)
                return True
        return False


def limited_httptools(max_header_bytes: int, header_timeout_s: float, cap: int, retry_after_s: int) -> type:
    """uvicorn's httptools protocol, with a size and a time limit on each request's head (request line and headers),
    and at most ``cap`` open connections (:class:`ConnectionCap`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    connections = ConnectionCap(cap, retry_after_s)

    class LimitedHttpTools(HttpToolsProtocol):
        # In a head: from the connection's start, and from each request's first byte to its blank line. Between
        # keep-alive requests uvicorn's own timeout_keep_alive applies.
        _in_head, _head_bytes, _head_timer, _refused = True, 0, None, False

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._start_head()
            if not connections.admit(self, self.connections):
                self._refuse(connections.busy)

        def connection_lost(self, exc: Exception | None) -> None:
            connections.working(self)
            self._stop_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                connections.idle(self)

        def data_received(self, data: bytes) -> None:
            if self._refused:  # read and dropped, so that closing does not reset the connection before the answer
                return
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)  # a chunk that completed the head does not count
                if self._head_bytes > max_header_bytes:
                    self._refuse(_431)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0
            if self._head_timer is None:
                self._start_head()

        def on_headers_complete(self) -> None:
            self._in_head = False
            connections.working(self)
            self._stop_timer()
            super().on_headers_complete()

        def _start_head(self) -> None:
            self._stop_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _stop_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(_408)

        def _refuse(self, response: bytes) -> None:
            """Answer and close; a client still sending gets LINGER_S to stop and read the answer first."""
            self._stop_timer()
            self._refused = True
            self.transport.write(response)
            self.loop.call_later(LINGER_S, self.transport.close)

        def close_now(self, response: bytes) -> None:
            """Answer and close at once: for a connection that is sending nothing, whose descriptor is needed."""
            self._stop_timer()
            self._refused = True
            self.transport.write(response)
            self.transport.close()

    return LimitedHttpTools
