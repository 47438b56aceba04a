"""How many connections the server holds open, and how long a client may take to send a request's head.

Each open connection is an open file, and a process may usually hold 1,024. Without a bound, clients that
send a request's head one byte every few seconds hold as many as they open, and the server can then accept
nobody ("Too many open files"). uvicorn's HTTP protocol (h11) is given two bounds here:

- at most `max_connections` held at once: one more is answered 503 at once and closed within a second;
- a request's head (its first line and headers) must arrive within `read_timeout` seconds of the connection
  opening or of the previous answer; a client still sending it then is answered 408 and closed.

The body is then read by the app, within the upload limit (server/guard.py).
"""

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain\r\n"
        b"content-length: 53\r\n\r\nthe server holds all the connections it may; try again\n")
TOO_SLOW = (b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\n"
            b"content-length: 42\r\n\r\nthe request's head took too long to arrive\n")
REFUSED_LINGER = 1.0  # seconds a refused connection may take to read its 503 before it is closed


def bounded_protocol(max_connections, read_timeout):
    """uvicorn's h11 protocol with a cap on the connections held and a deadline for each request's head:
    pass it as uvicorn.run(..., http=bounded_protocol(...))."""
    held = set()  # this server's connections within the cap

    class BoundedH11Protocol(H11Protocol):
        deadline = None  # the timer that closes a connection whose request's head has not arrived
        refused = False

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(held) >= max_connections:  # answered, its half closed; whatever the client sends is dropped
                self.refused = True
                transport.write(BUSY)
                if transport.can_write_eof():
                    transport.write_eof()
                self.deadline = self.loop.call_later(REFUSED_LINGER, transport.close)
                return
            held.add(self)
            self.expect_head()

        def expect_head(self):
            """Start the clock for the next request's head."""
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(read_timeout, self.head_too_slow)

        def head_too_slow(self):
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # no whole head yet
                self.transport.write(TOO_SLOW)
                self.transport.close()

        def data_received(self, data):
            if not self.refused:
                super().data_received(data)

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self.expect_head()  # a kept-alive connection has read_timeout for its next request too

        def connection_lost(self, exc):
            held.discard(self)
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

    return BoundedH11Protocol
