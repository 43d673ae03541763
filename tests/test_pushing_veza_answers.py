"""Veza's answers to a push: errors, warnings, unreachable or dripping servers, team keys, outcome unknown."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import NO_ROLE_READS, SCRIPT, TinyServer, application, clean_environment, load, summary_line
from fake_veza import HTML_PAGE, PushAnswer

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
    assert "Veza refused to create the provider 'OpenAI' (template application) (HTTP 403): run once with an " \
           "admin's key" in result.stderr
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
    assert f"cannot use Veza at {veza.url}: its TLS certificate could not be verified; if a proxy or a private CA " \
           "signs it, set REQUESTS_CA_BUNDLE to that CA's PEM file" in result.stderr
    assert "not reachable" not in result.stderr
    assert openai_fake.calls() == 0 and veza.pushes == []


PUSH_REJECTED = {"code": "Internal", "message": "payload rejected"}


@pytest.mark.parametrize(("answer", "quoted"), [
    (PUSH_REJECTED, "payload rejected"),
    ({"warnings": "abc"}, "abc"),
    ({"warnings": 5}, "warnings"),  # quoted: 'warnings' or "warnings" (never the summary's warnings=)
    ({"warnings": None}, "warnings"),
    (["pushed-elsewhere"], "pushed-elsewhere"),
], ids=["code", "warnings a string", "warnings a number", "warnings null", "a list"])
def test_an_odd_200_answer_to_the_push_is_outcome_unknown_quoting_the_answer(run_connector, veza, small_openai, answer,
                                                                            quoted):
    """Success is a 2xx JSON object without `code` whose `warnings`, when present, is a list; any other answer,
    even a 200, may or may not mean Veza stored the payload: outcome unknown, the answer quoted."""
    veza.push_answers.append(PushAnswer(200, body=answer, store=True))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert "outcome=unknown" in summary_line(result.stderr)
    quoting = re.compile(re.escape(quoted) if quoted != "warnings" else r"[\"']warnings[\"']")
    assert [line for line in result.stderr.splitlines()[:-1] if "ERROR" in line and quoting.search(line)], \
        result.stderr
    assert "unexpected error" not in result.stderr
    assert not re.search(r"WARNING Veza: [abc]$", result.stderr, re.MULTILINE)  # not "abc" as three warnings


@pytest.mark.parametrize("answer", [{"id": "source-1", "warnings": []}, {}, {"warnings": ["one", "two"]}],
                         ids=["id and no warnings", "empty object", "two warnings"])
def test_a_push_answered_with_a_json_object_and_a_list_of_warnings_is_pushed(run_connector, veza, small_openai, answer):
    veza.push_answers.append(PushAnswer(200, body=answer, store=True))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "outcome=pushed" in summary_line(result.stderr)
    for warning in answer.get("warnings", []):
        assert f"WARNING Veza: {warning}" in result.stderr
    assert f"veza_warnings={len(answer.get('warnings', []))} " in summary_line(result.stderr)


@pytest.mark.parametrize(("listing", "entries"), [("providers", 0), ("providers", 1), ("data sources", 0),
                                                  ("data sources", 1)])
def test_an_endless_veza_provider_or_data_source_list_fails_the_run_at_its_page_cap(run_connector, veza, small_openai,
                                                                                    listing, entries):
    """A Veza list that says has_more for ever (empty pages, or pages of other names) is read to 100 pages at
    most, then the run fails: nothing is pushed."""
    if listing == "providers":
        veza.endless_providers = entries
    else:
        veza.precreate("OpenAI")
        veza.endless_data_sources = entries
    result = run_connector(*NO_ROLE_READS, timeout=20)
    path = re.compile(r"^/api/v1/providers/custom$" if listing == "providers" else r"/datasources$")
    asked = [p for method, p in veza.requests if method == "GET" and path.search(p)]
    assert result.returncode == 1, result.output
    assert veza.pushes == []
    assert 0 < len(asked) <= 101
    assert "100 pages" in result.stderr or "has_more" in result.stderr
    assert "outcome=failed" in summary_line(result.stderr)


TEMPLATES = ("GET", "/api/v1/providers/custom/templates")


@pytest.mark.parametrize(("answer", "said"), [
    ((404, {}), "HTTP 404"),
    ((500, {}), "HTTP 500"),
    ((200, {"Content-Type": "text/html"}, HTML_PAGE), "not JSON"),
    ((200, {}, {"code": "OK"}), "values"),
], ids=["404", "500", "200 HTML page", "200 JSON without values"])
def test_a_veza_url_that_is_not_veza_fails_at_the_start_up_check(run_connector, veza, openai_fake, answer, said):
    """The start-up check wants a 200 JSON object with a `values` list: anything else fails within seconds,
    before any OpenAI call, saying what was wrong."""
    veza.answer_with[TEMPLATES] = answer
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert openai_fake.calls() == 0
    assert said in result.stderr
    assert veza.pushes == []


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_at_the_start_up_check_still_says_so(run_connector, veza, openai_fake, status):
    veza.answer_with[TEMPLATES] = (status, {})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert f"Veza refused the API key (HTTP {status})" in result.stderr
    assert openai_fake.calls() == 0
