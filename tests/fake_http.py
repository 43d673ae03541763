"""What both fakes' request handlers share."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler
from typing import Any


class QuietKeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log, and TCP_NODELAY."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Without this, keep-alive answers wait ~40 ms for the client's delayed ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass
