"""The server's transport limits: what uvicorn is told, and the header limits its httptools parser lacks.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and answers 503 above
``limit_concurrency`` connections, but with httptools nothing bounds a request's head: a client may
send a header of hundreds of megabytes, or open a socket and send nothing, for ever. The protocol
here refuses a head larger than ``max_header_bytes`` with 431 and closes a connection whose head is
not complete within ``header_timeout_s``, so idle and slow-header sockets cannot hold every file descriptor.
"""

from __future__ import annotations

import asyncio

from ..config import ServeSettings as Settings

LINGER_S = 1.0  # how long a refused connection's further bytes are read and dropped before it is closed
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 32\r\n\r\nrequest header fields too large\n"  # fmt: skip
_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 16\r\n\r\nrequest timeout\n"  # fmt: skip


def uvicorn_options(settings: Settings) -> dict:
    """The keyword arguments of ``uvicorn.run`` that carry ``settings``' transport limits."""
    return {
        "http": limited_httptools(settings.max_header_bytes, settings.header_timeout_s),
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,  # the same limit, should h11 be used
    }


def limited_httptools(max_header_bytes: int, header_timeout_s: float) -> type:
    """uvicorn's httptools protocol, with a size and a time limit on each request's head (request line and headers)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpTools(HttpToolsProtocol):
        # In a head: from the connection's start, and from each request's first byte to its blank line. Between
        # keep-alive requests uvicorn's own timeout_keep_alive applies.
        _in_head, _head_bytes, _head_timer, _refused = True, 0, None, False

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._start_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

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

    return LimitedHttpTools
