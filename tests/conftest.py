"""Fixtures: the fake OpenAI Admin API, the fake Veza over HTTPS, and running the connector.

`run_connector` calls veza_openai.main() in this process (fast); `run_connector_subprocess` runs
./veza_openai.py as a user does. Both give it the same clean environment and working directory.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import pytest
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI, Organization, demo_audit_logs, demo_organization, generate_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402

SCRIPT = ROOT / "veza_openai.py"
# Recognisable fake secrets: a test asserts neither ever reaches output or files.
OPENAI_SECRET = "sk-admin-TESTSECRET-openai-77"
VEZA_SECRET = "veza-TESTSECRET-token-88"
# For tests not about role assignments: the demo org has custom roles, so the default (auto) reads each of
# its 120 users' role assignments, which is most of a run's requests and time.
NO_ROLE_READS = ("--role-assignments", "none")


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


# The demo's audit events are relative to a clock; one clock for the session, so every demo organization of
# the session serves the same events and payloads compare equal (fault_free_payload), last_login_at included.
SESSION_NOW = int(time.time())


def session_demo_organization() -> Organization:
    org = demo_organization()
    org.audit_logs = demo_audit_logs(SESSION_NOW)
    return org


@pytest.fixture
def openai_fake():
    fake = FakeOpenAI(session_demo_organization(), admin_key=OPENAI_SECRET).start()
    yield fake
    fake.stop()


@pytest.fixture
def small_openai(openai_fake):
    """The fake OpenAI serves a small organization (one page of each list, a few records) instead of the demo:
    for tests of what happens around the read, not of what is read."""
    openai_fake.org = generate_organization(users=3, projects=1, members=1, service_accounts=1, keys=1, groups=1,
                                            group_members=1, org_id="org-small0001")
    return openai_fake


@pytest.fixture
def veza(ca):
    fake = FakeVeza(ca[0], api_key=VEZA_SECRET).start()
    yield fake
    fake.stop()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def saved_json(self) -> list[Path]:
        return sorted(self.cwd.rglob("*.json"))


def clean_environment(tmp_path: Path, ca: tuple[trustme.CA, str], openai_fake: FakeOpenAI, veza: FakeVeza,
                      env: dict[str, str] | None, drop: tuple[str, ...]) -> dict[str, str]:
    """Exactly these variables and no others, pointing at the fakes, as a user's shell would export them."""
    environment = {
        # the venv's python first, as after `source .venv/bin/activate`
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "REQUESTS_CA_BUNDLE": ca[1],
        "OAA_API_RETRIES": "0",  # oaaclient reads it when an OAAClient is created, so it applies in-process too
        "VEZA_OPENAI_TIME_SCALE": "0.001",
        "VEZA_URL": veza.url,
        "VEZA_API_KEY": VEZA_SECRET,
        "OPENAI_ORG_ID": openai_fake.org.org_id,
        "OPENAI_API_KEY": OPENAI_SECRET,
        "OPENAI_BASE_URL": openai_fake.base_url,
    }
    environment.update(env or {})
    for name in drop:
        environment.pop(name, None)
    return environment


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes a second or more; -m 'not slow' skips it")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every in-process run collects garbage once (veza_openai.discover): spare it the modules and tests loaded."""
    gc.freeze()


_fake_server_thread = threading.local()


@pytest.fixture(scope="session", autouse=True)
def mark_fake_server_threads():
    """Mark the threads that serve the fakes' requests, so an in-process run captures only the connector's output.

    socketserver prints a traceback to sys.stderr when a client hangs up mid-answer (as the connector does on
    a timeout); from a subprocess that went to the test's own stderr, never into the connector's output.
    """
    original = socketserver.ThreadingMixIn.process_request_thread

    def process_request_thread(self, request, client_address):
        _fake_server_thread.active = True
        original(self, request, client_address)

    socketserver.ThreadingMixIn.process_request_thread = process_request_thread
    yield
    socketserver.ThreadingMixIn.process_request_thread = original


class _ConnectorStream(io.TextIOBase):
    """sys.stdout/sys.stderr during an in-process run: the connector's writes are kept, the fakes' go on."""

    def __init__(self, passthrough: TextIO) -> None:
        self.buffer_ = io.StringIO()
        self.passthrough = passthrough

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(_fake_server_thread, "active", False):
            return self.passthrough.write(text)
        return self.buffer_.write(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return self.buffer_.getvalue()


def run_in_process(args: tuple[str, ...], environment: dict[str, str], cwd: Path, timeout: float = 90) -> Run:
    """veza_openai.main(args) with this environment, working directory and captured stdout/stderr.

    os.environ is exactly `environment` for the call; it, the working directory, sys.argv/stdin/stdout/stderr
    and the logging configuration main() installs are restored afterwards. It runs in a thread so a hang
    fails the test after `timeout` seconds instead of stalling the suite. argparse's SystemExit (--help, bad
    flags) becomes the return code, as in a subprocess.
    """
    import veza_openai

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    connector_log = logging.getLogger("veza_openai")
    saved_connector_level = connector_log.level
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["code"] = veza_openai.main(list(args))
        except SystemExit as exc:
            outcome["code"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                sys.stderr.write(exc.code + "\n")
        except BaseException as exc:  # re-raised in the test's thread, where pytest reports it
            outcome["error"] = exc

    with pytest.MonkeyPatch.context() as patch:
        stdout, stderr = _ConnectorStream(sys.stdout), _ConnectorStream(sys.stderr)
        patch.setattr(os, "environ", environment)
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [str(SCRIPT), *args])
        patch.setattr(sys, "stdin", io.StringIO())
        patch.setattr(sys, "stdout", stdout)
        patch.setattr(sys, "stderr", stderr)
        try:
            runner = threading.Thread(target=target, name="veza_openai.main", daemon=True)
            runner.start()
            runner.join(timeout)
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            connector_log.setLevel(saved_connector_level)
    if runner.is_alive():
        pytest.fail(f"veza_openai.main{args} did not finish within {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return Run(outcome["code"], stdout.getvalue(), stderr.getvalue(), cwd)


@pytest.fixture
def run_connector(tmp_path, ca, openai_fake, veza):
    """Run veza_openai.main in this process with a clean environment pointing at the fakes (fast)."""

    def run(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (), timeout: float = 90) -> Run:
        environment = clean_environment(tmp_path, ca, openai_fake, veza, env, drop)
        return run_in_process(args, environment, tmp_path, timeout)

    return run


@pytest.fixture(scope="session")
def fault_free_payload(ca, tmp_path_factory):
    """payload(*args, organization=...): what a clean run with these flags pushes for a fresh organization
    made by `organization()` (the demo by default; it must make the same organization every time).

    Computed once per organization, flag set and session (per xdist worker), against fakes of its own.
    """
    payloads: dict[tuple, dict] = {}

    def payload(*args: str, organization: Callable[[], Organization] = session_demo_organization) -> dict:
        if (organization, args) not in payloads:
            openai = FakeOpenAI(organization(), admin_key=OPENAI_SECRET).start()
            veza = FakeVeza(ca[0], api_key=VEZA_SECRET).start()
            try:
                workdir = tmp_path_factory.mktemp("fault-free")
                result = run_in_process(args, clean_environment(workdir, ca, openai, veza, None, ()), workdir)
                assert result.returncode == 0, result.output
                [payloads[organization, args]] = veza.payloads
            finally:
                veza.stop()
                openai.stop()
        return payloads[organization, args]

    return payload


@pytest.fixture
def run_connector_subprocess(tmp_path, ca, openai_fake, veza):
    """Run ./veza_openai.py in a subprocess, exactly as a user does, with the same clean environment."""

    def run(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (), timeout: float = 90) -> Run:
        environment = clean_environment(tmp_path, ca, openai_fake, veza, env, drop)
        done = subprocess.run([str(SCRIPT), *args], env=environment, cwd=tmp_path, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return Run(done.returncode, done.stdout, done.stderr, tmp_path)

    return run


def application(payload: dict) -> dict:
    return payload["applications"][0]


def by_id(entities: list[dict]) -> dict[str, dict]:
    return {entity["id"]: entity for entity in entities}


def assignments(payload: dict, identity: str) -> dict[str, dict]:
    """role id -> assignment for one identity in a pushed payload."""
    for entry in payload["identity_to_permissions"]:
        if entry["identity"] == identity:
            return {a["role"]: a for a in entry.get("role_assignments", [])}
    return {}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def summary_line(stderr: str) -> str:
    """The run's last log line, its summary."""
    return stderr.splitlines()[-1]


class TinyServer:
    """A socket server on 127.0.0.1 that hands each connection to `answer` on a thread of its own."""

    scheme = "http"

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()

    def answer(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.server.close()


def pushed(run_connector, veza, *args: str, **kwargs) -> tuple[dict, str]:
    """The one payload and the log of a successful run without per-user role reads."""
    result = run_connector(*NO_ROLE_READS, *args, **kwargs)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    return payload, result.stderr


def users_of(payload: dict) -> dict[str, dict]:
    return by_id(application(payload)["local_users"])


def creds_of(payload: dict) -> dict[str, dict]:
    return by_id(application(payload).get("local_access_creds", []))


def resources_of(payload: dict) -> dict[str, dict]:
    return by_id(application(payload).get("resources", []))


class RecordingServer(TinyServer):
    """Answers every request 200 with `body` (JSON) and records it: (request line, headers, body bytes).

    A redirect target, or a proxy, that must receive nothing. With `ca` it speaks HTTPS (a certificate for
    127.0.0.1 and localhost); `url_for("localhost")` names it by another host than the fakes' 127.0.0.1.
    """

    def __init__(self, ca: trustme.CA | None = None, body: bytes = b"{}") -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.body = body
        self.context = None
        if ca is not None:
            import ssl

            self.scheme = "https"
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.context)
        super().__init__()

    def url_for(self, host: str) -> str:
        return f"{self.scheme}://{host}:{self.server.getsockname()[1]}"

    def answer(self, connection: socket.socket) -> None:
        try:
            stream = self.context.wrap_socket(connection, server_side=True) if self.context else connection
            with stream:
                stream.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = stream.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")
                headers = {name.strip().lower(): value.strip()
                           for name, _, value in (field.partition(":") for field in fields)}
                length = int(headers.get("content-length") or 0)
                while len(body) < length:
                    chunk = stream.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                self.received.append((line, headers, body))
                stream.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                               b"Content-Length: " + str(len(self.body)).encode() + b"\r\n\r\n" + self.body)
        except OSError:
            pass
