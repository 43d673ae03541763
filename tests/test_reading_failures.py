"""Faults and hostile answers from OpenAI: what the run rides out, what stops it before anything is pushed."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, SCRIPT, VEZA_SECRET, application, clean_environment, summary_line
from fake_openai import Fault, generate_organization

import veza_openai


def fresh(fault: Fault) -> Fault:
    """A copy with its own hit counter, so parametrized cases do not share state."""
    return dataclasses.replace(fault, seen=0)


def role_reads_for(fault: Fault) -> tuple[str, ...]:
    """No per-user role assignment reads (most of a run's requests), unless the fault is on them."""
    return () if re.search(r"users.*roles", fault.path) else NO_ROLE_READS


RECOVERABLE = {
    "429 with retry-after on users": Fault(r"^/organization/users$", status=429, headers={"retry-after": "2"},
                                           times=3),
    "429 with retry-after-ms on project keys": Fault(r"/api_keys$", status=429,
                                                     headers={"retry-after-ms": "1500"}, times=4),
    "429 with no header on group users": Fault(r"/groups/[^/]+/users$", status=429, times=3),
    "500 burst on projects": Fault(r"^/organization/projects$", status=500, times=2),
    "502 burst on user roles": Fault(r"^/organization/users/[^/]+/roles$", status=502, times=3),
    "503 burst on the second users page": Fault(r"^/organization/users$", status=503, times=2, skip=1),
    "connection reset on roles": Fault(r"^/organization/roles$", kind="reset", times=2),
    "slow answer on invites": Fault(r"^/organization/invites$", kind="delay-only", delay=1.0, times=1),
    "overlapping pages of users": Fault(r"^/organization/users$", kind="overlap", times=None),
}


FATAL = {
    "500 longer than the retry budget": (Fault(r"^/organization/projects$", status=500, times=None),
                                         r"/organization/projects: HTTP 500, gave up after 6 retries"),
    "429 past the throttle deadline": (Fault(r"/service_accounts$", status=429, times=None),
                                       r"/organization/projects/proj_\w+/service_accounts: still HTTP 429 past "
                                       r"--max-throttle-wait 0.3s"),
    "reset every time": (Fault(r"^/organization/invites$", kind="reset", times=None),
                         r"/organization/invites: ConnectionError \(connection failed\), gave up"),
    "slow every time": (Fault(r"^/organization/groups$", kind="delay-only", delay=1.0, times=None),
                        r"/organization/groups: \w*Timeout \(timed out\), gave up"),
    "truncated body": (Fault(r"^/organization/users$", kind="truncate", skip=1),
                       r"/organization/users: answer is not JSON"),
    "non-JSON body": (Fault(r"^/organization/roles$", kind="nonjson"), r"/organization/roles: answer is not JSON"),
    "wrong object type": (Fault(r"^/organization/projects$", kind="wrong_object"),
                          r"/organization/projects: expected organization.project items"),
    "data not a list": (Fault(r"^/organization/admin_api_keys$", kind="data_not_list"),
                        r"/organization/admin_api_keys: 'data' is not a list"),
    "has_more without a cursor": (Fault(r"^/organization/users$", kind="no_cursor"),
                                  r"/organization/users: has_more is true but the page has no cursor"),
    "a cursor that repeats": (Fault(r"^/organization/groups$", kind="repeat_cursor", times=None),
                              r"/organization/groups: the cursor .* repeats"),
    "HTTP 400": (Fault(r"^/organization/invites$", status=400), r"/organization/invites: HTTP 400: injected 400"),
}


def marked_slow(names, slow: str) -> list:
    """Parameters with the one that waits out every timeout (~2 s) marked slow."""
    return [pytest.param(name, marks=pytest.mark.slow) if name.endswith(slow) else name for name in names]


SECRET_SCENARIOS = {**{f"recoverable: {k}": v for k, v in RECOVERABLE.items()},
                    **{f"fatal: {k}": v[0] for k, v in FATAL.items()}}


NOTHING_PUSHED = "nothing was pushed"


PEAK_RSS_WRAPPER = """
import atexit, resource, runpy, sys
report, script = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(report, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("name", RECOVERABLE)
def test_recoverable_faults_complete_with_the_fault_free_payload(run_connector, veza, openai_fake,
                                                                fault_free_payload, name):
    flags = role_reads_for(RECOVERABLE[name])
    openai_fake.faults.append(fresh(RECOVERABLE[name]))
    result = run_connector(*flags, "--timeout", "0.3")
    assert result.returncode == 0, result.output
    assert veza.payloads == [fault_free_payload(*flags)]
    if name != "overlapping pages of users":  # the fault was met: a retry, or a 429 waited out
        assert not re.search(r"throttled=0 .*retries=0 ", result.stderr.splitlines()[-1])


@pytest.mark.parametrize("name", marked_slow(FATAL, "slow every time"))
def test_unrecoverable_faults_exit_1_naming_the_endpoint_and_push_nothing(run_connector, veza, openai_fake, name):
    fault, message = FATAL[name]
    openai_fake.faults.append(fresh(fault))
    result = run_connector(*role_reads_for(fault), "--timeout", "0.3", "--max-throttle-wait", "0.3", "--save_json")
    assert result.returncode == 1, result.output
    assert re.search(message, result.stderr), result.stderr
    assert veza.pushes == [] and result.saved_json() == []
    assert "nothing was pushed; Veza keeps the previous snapshot" in result.stderr
    assert re.match(r".*summary: outcome=failed .*retries=\d+ seconds=", result.stderr.splitlines()[-1])
    assert "Traceback" not in result.output


# Only with --debug: it logs every record a plain run logs, the same way, plus debug records and tracebacks.
@pytest.mark.parametrize("name", marked_slow([*SECRET_SCENARIOS, "veza push 500", "veza refuses key",
                                              "openai refuses key"], "slow every time"))
def test_no_secret_reaches_output_or_files_whatever_goes_wrong(run_connector, veza, openai_fake, tmp_path, name):
    flags = NO_ROLE_READS
    if name in SECRET_SCENARIOS:
        fault = SECRET_SCENARIOS[name]
        openai_fake.faults.append(fresh(fault))
        flags = role_reads_for(fault)
    elif name == "veza push 500":
        veza.push_error = (500, {"code": "Internal", "message": f"echo {VEZA_SECRET}"})
    elif name == "veza refuses key":
        veza.api_key = "something-else"
    else:
        openai_fake.admin_key = "sk-admin-something-else"
    result = run_connector(*flags, "--timeout", "0.3", "--max-throttle-wait", "0.3", "--save_json", str(tmp_path),
                           "--debug")
    for secret in (OPENAI_SECRET, VEZA_SECRET):
        assert secret not in result.output
        for saved in result.saved_json():
            assert secret not in saved.read_text()
    assert result.returncode in (0, 1)


def test_a_transient_5xx_on_the_organization_object_is_retried_and_keeps_is_personal(
        run_connector, veza, openai_fake, fault_free_payload):
    openai_fake.faults.append(Fault(r"^/organizations/org-demo0001$", status=500, times=2))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organizations/org-demo0001$") == 3
    assert application(veza.payloads[0])["custom_properties"]["is_personal"] is False
    assert veza.payloads == [fault_free_payload(*NO_ROLE_READS)]
    assert "is_personal left unset" not in result.stderr


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


def test_a_gzip_bomb_is_refused_at_32_mb_without_growing_memory(tmp_path, ca, openai_fake, veza):
    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="gzip_bomb", body=50_000_000))
    environment = clean_environment(tmp_path, ca, openai_fake, veza, None, ())
    report = tmp_path / "maxrss"
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, str(report), str(SCRIPT), *NO_ROLE_READS],
                          env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert re.search(r"ERROR /organization/invites: answer over 32 MB", done.stderr), done.stderr
    assert veza.pushes == [] and NOTHING_PUSHED in done.stderr
    peak_mb = int(report.read_text()) / 1024
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB"  # the process, imports included; 1 GB is far away


def test_gzip_bombs_on_every_worker_at_once_stay_under_400_mb(tmp_path, ca, openai_fake, veza):
    """The decompressed cap is 256 MB divided by --max-workers (4 MB at 64 workers), so 64 bombs read at once
    stay bounded in total, not just one by one; the run fails naming the endpoint and the cap."""
    openai_fake.org = generate_organization(users=64, projects=64, members=1, service_accounts=1, keys=1,
                                            groups=0)
    openai_fake.faults.append(Fault(r"^/(organization/)?projects/[^/]+/", kind="gzip_bomb", body=50_000_000,
                                    times=None))
    environment = clean_environment(tmp_path, ca, openai_fake, veza, None, ())
    report = tmp_path / "maxrss"
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, str(report), str(SCRIPT), *NO_ROLE_READS,
                           "--max-workers", "64"], env=environment, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    peak_mb = int(report.read_text()) / 1024
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    assert [line for line in done.stderr.splitlines()
            if "ERROR" in line and "/projects/" in line and re.search(r"(?<![\d.])4 MB", line)], done.stderr
    assert veza.pushes == [] and NOTHING_PUSHED in done.stderr
