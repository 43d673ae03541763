"""The Admin API's redirects are refused: the admin key never follows one to another host, through a proxy, or
swapped for ~/.netrc credentials."""

from __future__ import annotations

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, RecordingServer, summary_line
from fake_openai import Fault
from fake_veza import PushAnswer

USERS = r"^/organization/users$"


def test_a_redirect_from_the_admin_api_fails_the_run_naming_its_host(run_connector, veza, openai_fake, small_openai):
    """A 3xx is no answer: the run fails, nothing is pushed, and the log says where the redirect pointed."""
    target = RecordingServer()
    openai_fake.faults.append(Fault(USERS, status=307,
                                    headers={"Location": target.url_for("localhost") + "/v1/organization/users"}))
    try:
        result = run_connector(*NO_ROLE_READS)
    finally:
        target.stop()
    assert target.received == []
    assert result.returncode == 1, result.output
    assert veza.pushes == []
    assert "outcome=failed" in summary_line(result.stderr)
    assert [line for line in result.stderr.splitlines() if "redirect" in line.lower() and "localhost" in line], \
        result.stderr


def test_a_same_host_redirect_never_takes_the_admin_key_through_a_proxy(run_connector, veza, openai_fake, small_openai):
    """A loopback OPENAI_BASE_URL never goes through HTTP_PROXY, redirected or not (the proxy would see the key)."""
    proxy = RecordingServer()
    openai_fake.faults.append(Fault(USERS, status=307,
                                    headers={"Location": f"{openai_fake.base_url}/organization/users"}))
    try:
        result = run_connector(*NO_ROLE_READS, env={"HTTP_PROXY": proxy.url, "http_proxy": proxy.url})
    finally:
        proxy.stop()
    assert proxy.received == []
    assert result.returncode == 1, result.output
    assert veza.pushes == []


@pytest.mark.parametrize("side", ["openai", "veza"])
def test_a_netrc_entry_never_replaces_a_key_after_a_same_host_redirect(run_connector, veza, openai_fake, small_openai,
                                                                       tmp_path, side):
    """~/.netrc has an entry for the fakes' host: every request either server receives carries the API key,
    never the netrc login (requests would put it on a redirected request)."""
    netrc = tmp_path / ".netrc"  # HOME is tmp_path
    netrc.write_text("machine 127.0.0.1 login netrc-login password netrc-password\n")
    netrc.chmod(0o600)
    if side == "openai":
        openai_fake.faults.append(Fault(USERS, status=307,
                                        headers={"Location": f"{openai_fake.base_url}/organization/users"}))
    else:
        veza.push_answers.append(PushAnswer(307, headers={"Location": f"{veza.url}/api/v1/providers/custom"}))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert set(openai_fake.authorizations) == {f"Bearer {OPENAI_SECRET}"}
    assert set(veza.authorizations) == {f"Bearer {VEZA_SECRET}"}
