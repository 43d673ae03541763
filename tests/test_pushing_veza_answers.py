"""Veza's answers to a push: errors, warnings, unreachable or dripping servers, team keys, outcome unknown."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from conftest import NO_ROLE_READS, SCRIPT, TinyServer, application, clean_environment, load, summary_line

UNKNOWN = "outcome unknown: Veza may have received the payload; check data source 'OpenAI - org-demo0001'"


NOTHING_PUSHED = "nothing was pushed"


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


def test_a_refused_veza_key_says_so_in_one_line_before_reading_openai(run_connector, veza, openai_fake):
    result = run_connector(env={"VEZA_API_KEY": "wrong-veza-key"})
    assert result.returncode == 1
    assert "Veza refused the API key (HTTP 401)" in result.stderr
    assert "Traceback" not in result.output
    assert openai_fake.calls() == 0


def test_veza_push_warnings_are_logged_and_not_fatal(run_connector, veza):
    veza.push_warnings = [{"message": "identity demo3@example.com not found"}]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    assert "Veza: {'message': 'identity demo3@example.com not found'}" in result.stderr
    assert "veza_warnings=1" in result.stderr


@pytest.mark.parametrize(("status", "body", "message", "outcome"), [
    (500, {"code": "Internal", "message": "database unavailable"}, "HTTP 500: Internal: database unavailable",
     "unknown"),  # a 5xx after the upload: Veza may have stored it
    (400, {"code": "InvalidArgument", "message": "payload rejected",
           "details": [{"reason": "identity user-9 has an invalid role"}]}, "HTTP 400: InvalidArgument", "failed"),
    (401, {"code": "Unauthenticated", "message": "token expired"}, "Veza refused the API key (HTTP 401)", "failed"),
])
def test_a_failed_push_exits_1_and_keeps_the_payload_on_disk(run_connector, veza, tmp_path, status, body, message,
                                                             outcome):
    veza.push_error = (status, body)
    result = run_connector(*NO_ROLE_READS, "--save_json", str(tmp_path / "payload.json"))
    assert result.returncode == 1
    assert message in result.stderr
    if body.get("details"):
        assert "identity user-9 has an invalid role" in result.stderr
    assert len(application(load(tmp_path / "payload.json"))["local_users"]) > 120
    assert f"outcome={outcome}" in result.stderr.splitlines()[-1]
    if outcome == "unknown":
        assert "outcome unknown: Veza may have received the payload; check data source 'OpenAI - org-demo0001'" \
            in result.stderr
    else:
        assert "nothing was pushed; Veza keeps the previous snapshot" in result.stderr


def test_unreachable_veza_fails_fast_before_any_openai_call(run_connector, openai_fake):
    result = run_connector(env={"VEZA_URL": "https://127.0.0.1:9"})
    assert result.returncode == 1
    assert "cannot use Veza at https://127.0.0.1:9" in result.stderr
    assert openai_fake.calls() == 0


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


def test_an_unreachable_veza_fails_in_seconds_with_oaaclients_default_retries(run_connector, openai_fake, veza):
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, env={"VEZA_URL": "https://127.0.0.1:9"}, drop=("OAA_API_RETRIES",),
                           timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert elapsed < 15, elapsed
    assert "cannot use Veza at https://127.0.0.1:9" in result.stderr
    assert openai_fake.calls() == 0 and veza.requests == []


def test_a_team_key_that_may_not_create_the_provider_says_what_to_do(run_connector, veza):
    veza.team_key = True
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1
    assert "Veza refused to create the provider 'OpenAI' (template application) (HTTP 403): this API key may not " \
           "create providers or data sources" in result.stderr
    assert "nothing was pushed" in result.stderr and veza.pushes == []


def test_a_team_key_pushes_once_the_provider_and_data_source_exist(run_connector, veza):
    veza.team_key = True
    veza.precreate("OpenAI", "OpenAI - org-demo0001")
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1


def test_a_veza_certificate_that_cannot_be_verified_is_named_with_requests_ca_bundle(run_connector, openai_fake,
                                                                                     veza):
    result = run_connector(*NO_ROLE_READS, drop=("REQUESTS_CA_BUNDLE",))  # the fake's CA is not trusted
    assert result.returncode == 1, result.output
    assert f"cannot use Veza at {veza.url}: its TLS certificate could not be verified. If a TLS-inspecting proxy " \
           "or a private CA signs it, set REQUESTS_CA_BUNDLE to that CA's certificate file (PEM)" in result.stderr
    assert "not reachable" not in result.stderr
    assert openai_fake.calls() == 0 and veza.pushes == []
