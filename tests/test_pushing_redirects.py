"""No Veza call follows a redirect: a 3xx is a failed call naming where it pointed, and the target gets nothing."""

from __future__ import annotations

import pytest
from conftest import NO_ROLE_READS, RecordingServer, summary_line
from fake_veza import PushAnswer

TEMPLATES = ("GET", "/api/v1/providers/custom/templates")
PROVIDERS = "/api/v1/providers/custom"
QUERIES = "/api/v1/assessments/queries"


def redirect_lines(stderr: str, host: str) -> list[str]:
    """Log lines that say a redirect was refused and name its target's host."""
    return [line for line in stderr.splitlines() if "redirect" in line.lower() and host in line]


@pytest.mark.parametrize(("status", "scheme"), [(307, "https"), (308, "https"), (308, "http"), (302, "https")])
def test_a_redirected_push_is_a_failed_push_naming_the_redirect_host(run_connector, veza, small_openai, ca, status,
                                                                      scheme):
    """A push answered 3xx is not re-sent elsewhere (307/308 would re-POST the payload, 302 would GET): the
    payload never leaves for the Location, and the run fails saying where Veza tried to send it."""
    target = RecordingServer(ca[0] if scheme == "https" else None)
    try:
        location = target.url_for("localhost") + "/api/v1/providers/custom/elsewhere/datasources/elsewhere:push"
        veza.push_answers.append(PushAnswer(status, headers={"Location": location}))
        result = run_connector(*NO_ROLE_READS)
    finally:
        target.stop()
    assert target.received == []
    assert result.returncode == 1, result.output
    assert veza.pushes == []
    assert "outcome=failed" in summary_line(result.stderr)
    assert redirect_lines(result.stderr, "localhost"), result.stderr


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_at_the_start_up_check_fails_the_run_before_any_openai_call(run_connector, veza, openai_fake, ca,
                                                                              status):
    """The start-up check follows no redirect either: a VEZA_URL that redirects fails at once."""
    target = RecordingServer(ca[0])
    try:
        veza.answer_with[TEMPLATES] = (status, {"Location": target.url_for("localhost") + TEMPLATES[1]})
        result = run_connector(*NO_ROLE_READS)
    finally:
        target.stop()
    assert target.received == []
    assert result.returncode == 1, result.output
    assert openai_fake.calls() == 0
    assert veza.pushes == []


@pytest.mark.parametrize("call", ["provider lookup", "provider create", "data source lookup", "data source create",
                                  "report"])
def test_no_veza_call_follows_a_redirect(run_connector, veza, small_openai, ca, call):
    """Lookups, creates and the report's calls: a 3xx is never followed to its Location."""
    target = RecordingServer(ca[0])
    location = {"Location": target.url_for("localhost") + "/elsewhere"}
    args = NO_ROLE_READS
    if call == "provider lookup":
        veza.answer_with[("GET", PROVIDERS)] = (307, location)
    elif call == "provider create":
        veza.answer_with[("POST", PROVIDERS)] = (307, location)
    elif call.startswith("data source"):
        provider, _ = veza.precreate("OpenAI")
        method = "GET" if call.endswith("lookup") else "POST"
        veza.answer_with[(method, f"{PROVIDERS}/{provider['id']}/datasources")] = (307, location)
    else:
        veza.answer_with[("GET", QUERIES)] = (307, location)
        args = (*NO_ROLE_READS, "--create-report")
    try:
        result = run_connector(*args)
    finally:
        target.stop()
    assert target.received == []
    if call == "report":  # the push stands; only the report failed
        assert len(veza.pushes) == 1, result.output
        assert "outcome=pushed" in summary_line(result.stderr) and "report=failed" in summary_line(result.stderr)
    else:
        assert result.returncode == 1, result.output
        assert veza.pushes == []
        assert "outcome=failed" in summary_line(result.stderr)
