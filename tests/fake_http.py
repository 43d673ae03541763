"""What the fakes' servers and request handlers share."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def stop_server(server: socketserver.BaseServer) -> None:
    """Stop a server running serve_forever(poll_interval=...) at once, not at its next poll.

    serve_forever checks for shutdown only when select() returns: a connection makes it return now, and the
    loop then stops without handling it. Over hundreds of tests, waiting out the poll adds up to seconds.
    """
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    try:
        socket.create_connection(server.server_address[:2], timeout=1).close()
    except OSError:
        pass  # already stopped, or no longer accepting: shutdown() returns anyway
    stopper.join()
    server.server_close()


class QuietKeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log, TCP_NODELAY, and no traceback when a client hangs up."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Without this, keep-alive answers wait ~40 ms for the client's delayed ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        # A client that hangs up mid-answer (the connector giving up on a timeout, a test's reset) is no error of
        # the fake's: socketserver would print its BrokenPipeError, ConnectionResetError or TLS EOF as a traceback.
        try:
            super().handle()
        except (ConnectionError, ssl.SSLEOFError):
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


class FakeServer(ThreadingHTTPServer):
    """A threading HTTP server whose listen backlog takes a burst of connections.

    socketserver's default backlog of 5 drops the SYNs of a burst (eight or more workers connecting at once),
    and each dropped SYN costs the client a 1 s retransmission: a stall in roughly one run in ten.
    """

    request_queue_size = 128
    daemon_threads = True
