"""The fakes' servers: a client that hangs up mid-answer leaves no traceback in the suite's output."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from typing import Callable

import pytest
from fake_openai import Fault

TEMPLATES = "/api/v1/providers/custom/templates"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def request_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if "process_request_thread" in thread.name}


def hang_up_while_answered(port: int, request: bytes, received: Callable[[], bool],
                           tls: ssl.SSLContext | None = None) -> None:
    """Send `request`, wait until the server has it (it then waits before answering), reset the connection,
    and wait until the server's thread for it has finished (written its answer into the reset connection)."""
    before = request_threads()
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls is not None:
        connection = tls.wrap_socket(connection, server_hostname="127.0.0.1")
    try:
        connection.sendall(request)
        wait_for(received, "the fake to receive the request")
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    finally:
        connection.close()
    for thread in request_threads() - before:
        thread.join(10)
        assert not thread.is_alive()


def test_a_client_hanging_up_mid_answer_makes_the_fake_openai_print_nothing(openai_fake, capsys):
    """The connector hangs up on a slow answer (its timeout); the fake's write into the reset connection
    (ConnectionResetError or BrokenPipeError) must not print a traceback among the suite's dots."""
    openai_fake.faults.append(Fault(r"^/organization/users$", kind="delay-only", delay=0.3))
    hang_up_while_answered(openai_fake.port, b"GET /v1/organization/users HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                           lambda: openai_fake.calls("users") == 1)
    assert capsys.readouterr().err == ""


def test_a_client_hanging_up_mid_answer_makes_the_fake_veza_print_nothing(veza, ca, capsys):
    """The same over the fake Veza's TLS: the write into the reset connection raises SSLEOFError or
    ConnectionResetError, and nothing is printed."""
    veza.delays[("GET", TEMPLATES)] = 0.3
    tls = ssl.create_default_context(cafile=ca[1])
    port = int(veza.url.rsplit(":", 1)[1])
    hang_up_while_answered(port, f"GET {TEMPLATES} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
                           lambda: ("GET", TEMPLATES) in veza.requests, tls)
    assert capsys.readouterr().err == ""


def test_a_client_hanging_up_between_requests_makes_the_fake_openai_print_nothing(openai_fake, capsys):
    """A keep-alive connection reset while the fake waits for its next request: nothing is printed."""
    before = request_threads()
    connection = socket.create_connection(("127.0.0.1", openai_fake.port), timeout=5)
    try:
        connection.sendall(b"GET /v1/organization/roles HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += connection.recv(65536)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        connection.close()
    for thread in request_threads() - before:
        thread.join(10)
        assert not thread.is_alive()
    assert capsys.readouterr().err == ""
