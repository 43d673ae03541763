"""Issue #10: a live organization, a stopped container, a hostile answer.

Records deleted while the run reads them, a push whose outcome is unknown, signals, answers that drip,
never end or decompress to gigabytes, proxies, log forging, odd ids and shapes, bad settings.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import NO_ROLE_READS, SCRIPT, application, assignments, by_id, clean_environment
from fake_openai import Fault

import veza_openai

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
UNKNOWN = "outcome unknown: Veza may have received the payload; check data source 'OpenAI - org-demo0001'"
NOTHING_PUSHED = "nothing was pushed"


def summary_line(stderr: str) -> str:
    return stderr.splitlines()[-1]


def remove_where(items: list[dict], **match: str) -> None:
    items[:] = [item for item in items if any(item.get(k) != v for k, v in match.items())]


# --- 1. a live organization: records deleted while the run reads them --------------------------------

def delete_group_eng(fake) -> None:
    remove_where(fake.org.groups, id="group_eng")


def test_a_group_deleted_mid_run_drops_only_that_group_and_its_memberships(run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="hook", body=delete_group_eng))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    app = application(payload)
    assert set(by_id(app.get("local_groups", []))) == {"group_fin"}
    users = by_id(app["local_users"])
    assert users["user-0012"]["groups"] == ["group_fin"]  # the other group's memberships stay
    assert not any("group_eng" in u.get("groups", []) for u in app["local_users"])
    assert "user-scim-only" not in users  # known only as a member of the deleted group
    assert "group_eng" not in {entry["identity"] for entry in payload["identity_to_permissions"]}
    assert "group group_eng was deleted during the run (HTTP 404 on /organization/groups/group_eng/" \
        in result.stderr
    assert "Groups: Read" not in result.stderr and "left out group" not in result.stderr
    assert "outcome=pushed" in summary_line(result.stderr)


def delete_project_alpha(fake) -> None:
    keys = {key["id"] for key in fake.org.api_keys.get("proj_alpha", [])}
    remove_where(fake.org.projects, id="proj_alpha")
    fake.org.admin_api_keys[:] = [k for k in fake.org.admin_api_keys if k["id"] not in keys]  # they go with it


def test_a_project_deleted_mid_run_drops_only_that_project_with_its_members_accounts_and_keys(
        run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/projects/proj_alpha/users$", kind="hook",
                                    body=delete_project_alpha))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    app = application(payload)
    assert {r["id"] for r in app["resources"] if r["resource_type"] == "project"} == {"proj_beta"}
    users = by_id(app["local_users"])
    for gone in ("svc_deploy", "svc_idle", "user-ghost"):
        assert gone not in users
    creds = set(by_id(app["local_access_creds"]))
    assert "key_admin1" in creds and not creds & {"key_svc1", "key_gone"}
    assert assignments(payload, "user-0000")["project_owner_via_organization"]["resources"] == ["proj_beta"]
    assert assignments(payload, "user-0012")["project_viewer"]["resources"] == ["proj_beta"]  # the other stays
    assert not any("proj_alpha" in a.get("resources", []) for a in assignments(payload, "user-0010").values())
    assert "project proj_alpha was deleted during the run (HTTP 404 on /organization/projects/proj_alpha/" \
        in result.stderr
    assert "Projects: Read" not in result.stderr and "API keys: Read" not in result.stderr


def test_a_project_key_of_a_project_deleted_mid_run_never_becomes_an_admin_key(run_connector, veza, openai_fake):
    # The admin key list (which also returns project keys) was read before the project went: it keeps key_user1.
    openai_fake.faults.append(Fault(r"^/organization/projects/proj_alpha/users$", kind="hook",
                                    body=lambda fake: remove_where(fake.org.projects, id="proj_alpha")))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert "admin_api_key" not in assignments(payload, "key_user1")
    assert "key_user1" not in by_id(application(payload)["local_access_creds"])


def delete_user_0013(fake) -> None:
    remove_where(fake.org.users, id="user-0013")


def test_a_user_deleted_mid_run_drops_only_that_user_and_its_role_assignments(run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/users/user-0013/roles$", kind="hook", body=delete_user_0013))
    result = run_connector("--role-assignments", "all")
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    users = by_id(application(payload)["local_users"])
    assert "user-0013" not in users and "user-0014" in users
    assert assignments(payload, "user-0013") == {}
    assert "role-custom-billing" in assignments(payload, "group_fin")  # every other grant stays
    assert "role-custom-proj-deployer" in assignments(payload, "user-0011")
    assert "user user-0013 was deleted during the run (HTTP 404 on /organization/users/user-0013/roles)" \
        in result.stderr
    assert "Roles: Read" not in result.stderr


@pytest.mark.parametrize("status", [404, 403])
def test_a_refusal_on_every_groups_members_still_leaves_the_family_out_naming_the_grant(
        run_connector, veza, openai_fake, status):
    openai_fake.refused["group users"] = status
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    assert set(by_id(app["local_groups"])) == {"group_eng", "group_fin"}
    assert not any(u.get("groups") for u in app["local_users"])
    assert re.search(rf"WARNING left out group users \(HTTP {status} .*\): grant the admin key 'Groups: Read'",
                     result.stderr), result.stderr
    assert "deleted during the run" not in result.stderr


def test_the_only_group_deleted_mid_run_is_dropped_not_blamed_on_permissions(run_connector, veza, openai_fake):
    remove_where(openai_fake.org.groups, id="group_fin")

    def delete_after_its_roles_were_read(fake) -> None:
        time.sleep(0.3)  # the concurrent /organization/groups/group_eng/roles read answers 200 meanwhile
        delete_group_eng(fake)

    openai_fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="hook",
                                    body=delete_after_its_roles_were_read))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/groups/group_eng/roles$") == 1
    assert "Groups: Read" not in result.stderr
    assert "group group_eng was deleted during the run" in result.stderr
    assert by_id(application(veza.payloads[0]).get("local_groups", [])) == {}


# --- 2. the organization object is retried like any read ---------------------------------------------

def test_a_transient_5xx_on_the_organization_object_is_retried_and_keeps_is_personal(
        run_connector, veza, openai_fake, fault_free_payload):
    openai_fake.faults.append(Fault(r"^/organizations/org-demo0001$", status=500, times=2))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organizations/org-demo0001$") == 3
    assert application(veza.payloads[0])["custom_properties"]["is_personal"] is False
    assert veza.payloads == [fault_free_payload(*NO_ROLE_READS)]
    assert "is_personal left unset" not in result.stderr


# --- 3. push honesty: stored, then no clear answer ----------------------------------------------------

@pytest.mark.parametrize("then", ["reset", "502", "nonjson", "drip"])
def test_a_push_stored_then_unanswered_is_reported_as_outcome_unknown_never_as_nothing_pushed(
        run_connector, veza, then):
    veza.push_then = then
    veza.drip_interval = 0.5  # below the 1 s read timeout: only a whole-answer deadline stops it (~30 s body)
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, env={"OAA_API_TIMEOUT": "1"}, timeout=40)
    elapsed = time.monotonic() - started
    assert len(veza.pushes) == 1  # the fake did store it
    assert result.returncode == 1, result.output
    assert UNKNOWN in result.stderr
    assert NOTHING_PUSHED not in result.stderr
    assert "outcome=unknown" in summary_line(result.stderr)
    assert elapsed < 15, f"{then}: {elapsed:.1f}s"


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


class DrippingVeza(TinyServer):
    """HTTPS on 127.0.0.1 that answers every request 200 with a valid body, one byte every `interval` seconds."""

    scheme = "https"
    BODY = b'{"values": [{"id": "application"}], "has_more": false}' + b" " * 26

    def __init__(self, ca, interval: float) -> None:
        import ssl

        self.interval = interval
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        super().__init__()

    def answer(self, connection: socket.socket) -> None:
        try:
            with self.context.wrap_socket(connection, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += tls.recv(4096) or b"\r\n\r\n"
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                            + str(len(self.BODY)).encode() + b"\r\n\r\n")
                for index in range(len(self.BODY)):
                    if self.stopping.wait(self.interval):
                        return
                    tls.sendall(self.BODY[index:index + 1])
        except OSError:
            pass


CHECK_TIMEOUT_WRAPPER = """
import sys
sys.path.insert(0, sys.argv[1])
import veza_openai
veza_openai.VEZA_CHECK_TIMEOUT = 1.0
sys.exit(veza_openai.main(sys.argv[2:]))
"""


def test_a_veza_that_drips_its_first_answers_is_given_up_within_the_check_timeout(tmp_path, ca, openai_fake, veza):
    dripping = DrippingVeza(ca[0], interval=0.1)  # ~8 s per answer, each byte well within every gap timeout
    environment = clean_environment(tmp_path, ca, openai_fake, veza, {"VEZA_URL": dripping.url,
                                                                      "OAA_API_TIMEOUT": "1"}, ())
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", CHECK_TIMEOUT_WRAPPER, str(SCRIPT.parent), *NO_ROLE_READS],
                               env=environment, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"still waiting for Veza after {time.monotonic() - started:.1f}s (VEZA_CHECK_TIMEOUT 1s)")
    finally:
        dripping.stop()
    assert process.returncode == 1, stderr
    assert "cannot use Veza at" in stderr
    assert openai_fake.calls() == 0


# --- 4. signals: docker stop, Ctrl-C, PID 1 ----------------------------------------------------------

def slow_users(openai_fake) -> None:
    openai_fake.faults.append(Fault(r"^/organization/users$", kind="delay-only", delay=5, times=None))


def wait_for_users_read(openai_fake, process: subprocess.Popen, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while openai_fake.calls(r"^/organization/users$") == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the connector never asked for users"
        time.sleep(0.02)
    time.sleep(0.2)  # well inside the 5 s answer


def signal_when_ready(command: list[str], environment: dict[str, str], cwd: Path,
                      ready: Callable[[subprocess.Popen], tuple[int, int]]) -> tuple[int, float, str]:
    """Start `command`; when `ready(process)` returns (a pid and the signal to send it), send it; return the
    exit status, the seconds from the signal to the exit, and stderr. The process never outlives the test."""
    process = subprocess.Popen(command, env=environment, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        pid, signum = ready(process)
        sent = time.monotonic()
        os.kill(pid, signum)
        _, stderr = process.communicate(timeout=10)
        return process.returncode, time.monotonic() - sent, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# SIGINT back to its default before exec, whatever the test runner's disposition (an ignored SIGINT stays
# ignored across exec; a default one gets Python's KeyboardInterrupt handler). No preexec_fn: the fakes run threads.
DEFAULT_SIGINT = ("-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.parametrize(("signum", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                         (signal.SIGINT, 130, "Ctrl-C (SIGINT)")])
def test_a_signal_while_reading_stops_within_seconds_and_pushes_nothing(tmp_path, ca, openai_fake, veza, signum,
                                                                        status, name):
    slow_users(openai_fake)

    def reading(process: subprocess.Popen) -> tuple[int, int]:
        wait_for_users_read(openai_fake, process)
        return process.pid, signum

    returncode, elapsed, stderr = signal_when_ready(
        [sys.executable, *DEFAULT_SIGINT, sys.executable, str(SCRIPT), *NO_ROLE_READS],
        clean_environment(tmp_path, ca, openai_fake, veza, None, ()), tmp_path, reading)
    assert returncode == status, stderr
    assert elapsed < 2.5, elapsed
    assert f"stopped by {name}" in stderr
    assert NOTHING_PUSHED in stderr
    assert "outcome=interrupted" in summary_line(stderr)
    assert veza.pushes == []


def test_sigterm_during_the_push_exits_143_with_the_outcome_unknown(tmp_path, ca, openai_fake, veza):
    veza.push_then, veza.drip_interval = "drip", 0.5  # stored, then an answer that takes ~30 s

    def pushing(process: subprocess.Popen) -> tuple[int, int]:
        deadline = time.monotonic() + 20
        while not veza.pushes:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        time.sleep(0.2)
        return process.pid, signal.SIGTERM

    returncode, elapsed, stderr = signal_when_ready(
        [sys.executable, str(SCRIPT), *NO_ROLE_READS], clean_environment(tmp_path, ca, openai_fake, veza, None, ()),
        tmp_path, pushing)
    assert returncode == 143, stderr
    assert elapsed < 2.5, elapsed
    assert "stopped by SIGTERM" in stderr and UNKNOWN in stderr and NOTHING_PUSHED not in stderr
    assert "outcome=unknown" in summary_line(stderr)


def child_of(pid: int, limit: float = 10) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} has no child")


def test_sigterm_stops_the_connector_running_as_pid_1_of_its_namespace(tmp_path, ca, openai_fake, veza):
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid --fork --mount-proc is not permitted here: {probe.stderr.decode().strip()}")
    slow_users(openai_fake)

    def reading_as_pid_1(process: subprocess.Popen) -> tuple[int, int]:
        connector = child_of(process.pid)
        status = Path(f"/proc/{connector}/status").read_text()
        assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), status  # PID 1 in its namespace
        wait_for_users_read(openai_fake, process)
        return connector, signal.SIGTERM

    returncode, elapsed, stderr = signal_when_ready(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(SCRIPT), *NO_ROLE_READS],
        clean_environment(tmp_path, ca, openai_fake, veza, None, ()), tmp_path, reading_as_pid_1)
    assert returncode == 143, stderr
    assert elapsed < 2.5, elapsed
    assert "stopped by SIGTERM" in stderr and NOTHING_PUSHED in stderr
    assert "outcome=interrupted" in summary_line(stderr)
    assert veza.pushes == []


def test_stop_on_signals_raises_stopped_inside_and_restores_the_previous_handler_after():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    original = signal.getsignal(signal.SIGTERM)
    marker = []

    def previous(signum, frame):
        marker.append(signum)

    signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(veza_openai.Stopped) as stopped, veza_openai.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs at the next bytecode boundary
                time.sleep(0.01)
        assert stopped.value.signal_name == "SIGTERM"
        assert stopped.value.status == 143
        assert not isinstance(stopped.value, Exception)  # `except Exception` in the run cannot swallow it
        assert signal.getsignal(signal.SIGTERM) is previous
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if marker:
                break
            time.sleep(0.01)
        assert marker == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


# --- 5-7. hostile answers: dripped, endless, bombs --------------------------------------------------

def test_a_dripping_body_fails_by_the_whole_answer_deadline_naming_the_endpoint(run_connector, veza, openai_fake):
    for i in range(12):  # a few KB of invites
        openai_fake.org.invites.append({"object": "organization.invite", "id": f"invite-old-{i:02d}",
                                        "email": f"old{i}@example.com", "role": "reader", "status": "expired",
                                        "created_at": 1, "expires_at": 2, "accepted_at": None, "projects": []})
    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="drip", delay=0.05, times=None))
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--timeout", "0.5", "--max-retries", "1", timeout=20)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert elapsed < 5, elapsed  # unbounded, each attempt would take ~2 minutes
    assert re.search(r"ERROR /organization/invites: \w*Timeout \(.*\)", result.stderr), result.stderr
    assert veza.pushes == [] and NOTHING_PUSHED in result.stderr
    assert "outcome=failed" in summary_line(result.stderr)


def test_endless_pagination_stops_at_the_page_cap_with_a_clear_message(run_connector, veza, openai_fake,
                                                                       monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_PAGES_PER_LIST", 30, raising=False)
    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="endless", times=None))
    result = run_connector(*NO_ROLE_READS, timeout=20)
    assert result.returncode == 1, result.output
    assert openai_fake.calls(r"^/organization/invites$") == 30
    assert "/organization/invites: still has_more after 30 pages" in result.stderr
    assert veza.pushes == [] and NOTHING_PUSHED in result.stderr


PEAK_RSS_WRAPPER = """
import atexit, resource, runpy, sys
report, script = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(report, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def test_a_gzip_bomb_is_refused_at_32_mb_without_growing_memory(tmp_path, ca, openai_fake, veza):
    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="gzip_bomb", body=50_000_000))
    environment = clean_environment(tmp_path, ca, openai_fake, veza, None, ())
    report = tmp_path / "maxrss"
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, str(report), str(SCRIPT), *NO_ROLE_READS],
                          env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert re.search(r"ERROR /organization/invites: answer larger than 32 MB", done.stderr), done.stderr
    assert veza.pushes == [] and NOTHING_PUSHED in done.stderr
    peak_mb = int(report.read_text()) / 1024
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB"  # the process, imports included; 1 GB is far away


# --- 8. proxies never see the loopback admin key ------------------------------------------------------

class RecordingProxy(TinyServer):
    """Accepts any connection on 127.0.0.1, records what it was sent, answers 502."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        super().__init__()

    def answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(1)
            try:
                self.seen.append(connection.recv(65536))
                connection.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                self.seen.append(b"")


@pytest.fixture
def proxy():
    server = RecordingProxy()
    yield server
    server.stop()


@pytest.mark.parametrize("names", [("HTTP_PROXY", "http_proxy"),
                                   ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY")])
def test_a_proxy_from_the_environment_never_sees_requests_to_a_loopback_openai(run_connector, veza, tmp_path,
                                                                              proxy, names):
    env = dict.fromkeys(names, proxy.url)
    # ALL_PROXY/HTTPS_PROXY also apply to the (https, loopback) fake Veza, which an operator's proxy serves: dry run
    dry = ("--dry-run",) if "ALL_PROXY" in names else ()
    result = run_connector(*NO_ROLE_READS, *dry, env=env)
    assert result.returncode == 0, result.output
    assert proxy.seen == []
    assert len(veza.payloads) == (0 if dry else 1)
    if dry:
        assert len(result.saved_json()) == 1


# --- 9. log lines cannot be forged -------------------------------------------------------------------

FORGED = "\n2026-01-01 00:00:00,000 INFO summary: outcome=pushed"
EVIL_ID = f"user-evil{FORGED}\x1b[2J"


def assert_no_forged_lines(stderr: str) -> None:
    assert "\x1b" not in stderr
    for line in stderr.splitlines():
        assert TIMESTAMP.match(line), line
        assert not line.startswith("2026-01-01 00:00:00,000"), line


def test_hostile_ids_and_role_values_are_escaped_on_one_log_line(run_connector, veza, openai_fake):
    openai_fake.org.project_users["proj_alpha"].append(
        {"object": "organization.project.user", "id": EVIL_ID, "name": "Evil", "email": "evil@example.com",
         "role": "member", "added_at": 1})
    openai_fake.org.users[6]["role"] = f"auditor{FORGED}\x1b[2J"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert_no_forged_lines(result.stderr)
    escaped = "user-evil\\n2026-01-01 00:00:00,000 INFO summary: outcome=pushed\\x1b[2J"
    [warning] = [line for line in result.stderr.splitlines() if escaped in line]
    assert " WARNING project proj_alpha names user " in warning
    # the role value is lower-cased, then shown with repr(): escaped twice over, still one line
    assert re.search(r"WARNING unknown organization role 'auditor\\n2026-01-01 .*\\x1b\[2j'", result.stderr)
    assert EVIL_ID in by_id(application(veza.payloads[0])["local_users"])  # the payload keeps the real id


def test_an_openai_error_message_with_a_newline_is_escaped_in_the_log(run_connector, veza, openai_fake):
    body = {"error": {"message": f"bad request{FORGED}\x1b[2J", "type": "invalid_request_error", "param": None,
                      "code": None}}
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=400, body=body))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert_no_forged_lines(result.stderr)
    assert "ERROR /organization/invites: HTTP 400: bad request\\n2026-01-01 00:00:00,000 INFO summary: " \
           "outcome=pushed\\x1b[2J" in result.stderr
    assert "outcome=failed" in summary_line(result.stderr)


def test_an_openai_error_message_with_a_newline_is_escaped_in_the_debug_traceback_too(run_connector, openai_fake):
    body = {"error": {"message": f"bad request{FORGED}\x1b[2J", "type": "invalid_request_error", "param": None,
                      "code": None}}
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=400, body=body))
    result = run_connector(*NO_ROLE_READS, "--debug")
    assert result.returncode == 1, result.output
    assert "Traceback" in result.stderr
    assert "\x1b" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("2026-01-01 00:00:00,000")]


# --- 10. ids and shapes ------------------------------------------------------------------------------

def local_user_ids(payload: dict) -> list[str]:
    return [user["id"] for user in application(payload)["local_users"]]


def test_an_invite_with_the_id_of_a_user_is_left_out_with_a_warning(run_connector, veza, openai_fake):
    openai_fake.org.invites.append({"object": "organization.invite", "id": "user-0042", "email": "dup@example.com",
                                    "role": "reader", "status": "pending", "created_at": 1, "expires_at": 2,
                                    "accepted_at": None, "projects": []})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = local_user_ids(veza.payloads[0])
    assert ids.count("user-0042") == 1
    assert by_id(application(veza.payloads[0])["local_users"])["user-0042"]["name"] == "Demo User 42"
    assert "invite user-0042 has the id of an existing user; the invite is left out" in result.stderr


def test_user_ids_that_differ_only_in_case_become_one_entity_with_a_warning(run_connector, veza, openai_fake):
    for uid in ("user-AAA", "user-aaa"):
        openai_fake.org.users.append({"object": "organization.user", "id": uid, "name": uid,
                                      "email": f"{uid}@example.com", "role": "reader", "added_at": 1})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = local_user_ids(veza.payloads[0])
    assert [i for i in ids if i.casefold() == "user-aaa"] == ["user-AAA"]
    assert len(ids) == len({i.casefold() for i in ids})
    assert "organization user ids 'user-AAA' and 'user-aaa' differ only in case" in result.stderr


def test_a_role_whose_permissions_is_a_string_becomes_one_permission(run_connector, veza, openai_fake):
    openai_fake.org.roles.append({"object": "role", "id": "role-stringy", "name": "Stringy",
                                  "permissions": "api.organization.read", "predefined_role": False,
                                  "resource_type": "api.organization", "description": None})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert by_id(application(payload)["local_roles"])["role-stringy"]["permissions"] == ["api.organization.read"]
    names = [p["name"] for p in payload["permissions"]]
    assert not [name for name in names if len(name) == 1]
    assert "role role-stringy lists its permissions as one string, not a list; read as one permission" \
        in result.stderr


def test_an_org_role_value_admin_api_key_never_grants_the_admin_key_roles_permissions(run_connector, veza,
                                                                                     openai_fake):
    openai_fake.org.users[6]["role"] = "admin_api_key"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert set(assignments(payload, "user-0006")) == {"organization_admin_api_key"}
    roles = by_id(application(payload)["local_roles"])
    # an unknown org role value: Reader's permissions, never the admin key role's
    assert roles["organization_admin_api_key"]["permissions"] == ["Standard API Requests", "Read Organization"]
    assert roles["admin_api_key"]["permissions"] == ["Read Organization", "Modify Billing", "Manage Members"]
    assert "unknown organization role 'admin_api_key'" in result.stderr


def test_an_org_role_value_equal_to_a_custom_role_id_never_empties_that_custom_role(run_connector, veza,
                                                                                   openai_fake):
    openai_fake.org.users[6]["role"] = "role-custom-billing"
    result = run_connector()
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    billing = by_id(application(payload)["local_roles"])["role-custom-billing"]
    assert billing["name"] == "Billing Auditor"
    assert len(billing.get("permissions", [])) == 6
    assert "role-custom-billing" in assignments(payload, "group_fin")


def test_a_user_record_with_a_numeric_id_is_skipped_with_a_warning(run_connector, veza, openai_fake):
    openai_fake.org.users.insert(50, {"object": "organization.user", "id": 12345, "name": "Numeric",
                                      "email": "numeric@example.com", "role": "reader", "added_at": 1})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = local_user_ids(veza.payloads[0])
    assert "12345" not in ids and 12345 not in ids and "user-0050" in ids
    assert re.search(r"WARNING an? organization user record has no usable id \(int\); skipped", result.stderr)


# --- 11. configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "args", "message"), [
    ({"OPENAI_ORG_ID": "org-demo0001\n"}, (), "OPENAI_ORG_ID (or --openai-org) must look like org-"),
    ({"OPENAI_API_KEY": "sk-admin-ключ-1234"}, (), "OPENAI_API_KEY contains non-ASCII characters"),
    ({"OPENAI_API_KEY": "sk-admin-" + "k" * 102_400}, (), "OPENAI_API_KEY is 102,409 characters long"),
    ({"VEZA_URL": "https://veza.example.com/app/dashboard"}, (), "VEZA_URL (or --veza_url) must be the instance's "
     "address only"),
    ({}, ("--save_json", "x" * 295 + ".json"), "--save_json file name is longer than"),
], ids=["org id with a newline", "non-ASCII key", "100 KB key", "VEZA_URL of a page", "300-character file name"])
def test_bad_settings_exit_2_before_any_request(run_connector, veza, openai_fake, env, args, message):
    result = run_connector(*args, env=env)
    assert result.returncode == 2, result.output
    assert f"configuration error: {message}" in result.stderr
    assert openai_fake.calls() == 0 and veza.requests == []
    assert "k" * 200 not in result.output


def test_an_upper_case_https_scheme_in_veza_url_is_accepted(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"VEZA_URL": veza.url.replace("https://", "HTTPS://")})
    assert result.returncode == 0, result.output
    assert len(veza.payloads) == 1


class FullDiskOs:
    """veza_openai's `os`, except that the payload file it opens is /dev/full (ENOSPC on write)."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd: int, *args, **kwargs):
        os.close(fd)
        return open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 (the caller closes it)


def test_a_full_disk_when_saving_fails_the_run_before_the_push(run_connector, veza, tmp_path, monkeypatch):
    monkeypatch.setattr(veza_openai, "os", FullDiskOs())
    target = tmp_path / "out" / "payload.json"
    target.parent.mkdir()
    result = run_connector(*NO_ROLE_READS, "--save_json", str(target))
    assert result.returncode == 1, result.output
    assert re.search(r"ERROR could not write the payload to .*payload\.json: No space left on device \(full disk\?\)",
                     result.stderr), result.stderr
    assert NOTHING_PUSHED in result.stderr
    assert veza.pushes == []
    assert list(target.parent.iterdir()) == []  # no half-written file, no temporary left behind


# --- 12. an unreachable Veza fails fast ----------------------------------------------------------------

def test_an_unreachable_veza_fails_in_seconds_with_oaaclients_default_retries(run_connector, openai_fake, veza):
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, env={"VEZA_URL": "https://127.0.0.1:9"}, drop=("OAA_API_RETRIES",),
                           timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert elapsed < 15, elapsed
    assert "cannot use Veza at https://127.0.0.1:9" in result.stderr
    assert openai_fake.calls() == 0 and veza.requests == []


def test_a_list_every_project_answers_404_for_costs_one_object_read_and_leaves_the_family_out(
        run_connector, veza, openai_fake):
    openai_fake.refused["project certificates"] = 404
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/projects/proj_[a-z]+$") == 1  # one project asked, not each
    assert re.search(r"left out project certificates \(HTTP 404 on /organization/projects/proj_\w+/certificates, "
                     r"while project proj_\w+ exists\): grant the admin key 'Certificates: Read'", result.stderr)
    assert {r["id"] for r in application(veza.payloads[0])["resources"] if r["resource_type"] == "project"} == \
        {"proj_alpha", "proj_beta"}
    assert "was deleted during the run" not in result.stderr
