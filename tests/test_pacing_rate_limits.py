"""The real Admin API is rate-bound: each endpoint has its own limit, with or without a retry hint.

Each model of the fake (tests/fake_limits.py) either completes with the payload of a run without
limits, or exits 1 with nothing pushed. Times are real but small (a 0.6 s window stands for a minute)
and the connector's waits are scaled to match with VEZA_OPENAI_TIME_SCALE=0.01, so proportions are real:
the 0.6 s window is longer than the 5xx retry budget (0.315 s at this scale).
"""

from __future__ import annotations

import re

import pytest
from fake_limits import AlwaysThrottled, EveryKth, FixedWindows, TokenBucket
from fake_openai import ROUTES, Fault, generate_organization

SCALE = 0.01
ENV = {"VEZA_OPENAI_TIME_SCALE": str(SCALE)}
FAMILY_OF = [(re.compile(f"^{regex}$"), family) for regex, family, *_ in ROUTES]


def family_of(path: str) -> str:
    return next(family for regex, family in FAMILY_OF if regex.match(path))


def small_organization():
    """12 projects, so per-project endpoints make 12 reads each; the org id the fixtures point at."""
    return generate_organization(users=120, projects=12, members=3, service_accounts=1, keys=2, groups=2,
                                 group_members=5, org_id="org-demo0001")


@pytest.fixture
def small_org(openai_fake):
    openai_fake.org = small_organization()
    return openai_fake


@pytest.fixture
def clean_payload(fault_free_payload):
    """What a run without limits pushes for the small organization (computed once per worker)."""
    return fault_free_payload("--role-assignments", "none", organization=small_organization)


MODELS = {
    "token bucket, retry-after-ms": lambda: TokenBucket(40, 3, "ms", time_scale=SCALE),
    "token bucket, retry-after in whole seconds": lambda: TokenBucket(40, 3, "s", time_scale=SCALE),
    "token bucket, no header": lambda: TokenBucket(40, 3, None),
    "every 7th request, retry-after-ms 20": lambda: EveryKth(7, 20),
    "fixed windows per endpoint, no header": lambda: FixedWindows((60, 0.6), {"project roles": (3, 0.6)}),
}


@pytest.mark.parametrize("model", MODELS)
def test_each_rate_limit_model_completes_with_the_unlimited_payload(small_org, clean_payload, run_connector, veza,
                                                                      model):
    small_org.limiter = MODELS[model]()
    result = run_connector("--role-assignments", "none", env=ENV)
    assert result.returncode == 0, result.output
    assert veza.payloads == [clean_payload]
    summary = result.stderr.splitlines()[-1]
    assert small_org.limiter.total_throttled > 0
    assert f"throttled={small_org.limiter.total_throttled} " in summary
    assert "retries=0 " in summary  # a 429 is "later", not a fault: it spends no retry budget


def test_a_throttled_endpoint_never_slows_the_others(small_org, run_connector):
    small_org.limiter = FixedWindows((60, 0.6), {"project roles": (3, 0.6)})
    assert run_connector("--role-assignments", "none", env=ENV).returncode == 0
    assert set(small_org.limiter.throttled) == {"project roles"}
    first_429 = min(at for at, path, status in small_org.timeline if status == 429)
    roles = [at for at, path, status in small_org.timeline if family_of(path) == "project roles" and status == 200]
    others_after = [at for at, path, status in small_org.timeline
                    if family_of(path) != "project roles" and at > first_429]
    assert len(roles) == 12 and len(others_after) >= 20  # the per-project reads were still under way
    # While project roles waits out its window, the other endpoints go on: a pace shared with it would send
    # nothing for the rest of the window but the few requests already in flight (at most 7). A loaded machine
    # only spreads the others out, putting more of them inside the window, never fewer than it can send.
    in_the_pause = [at for at in others_after if at < first_429 + 0.5]
    assert len(in_the_pause) >= 12 or len(in_the_pause) == len(others_after), (len(in_the_pause), len(others_after))


def test_a_window_without_hints_is_learned_and_probed_sparingly(small_org, run_connector):
    small_org.limiter = FixedWindows((60, 0.6), {"project roles": (3, 0.6)})
    assert run_connector("--role-assignments", "none", env=ENV).returncode == 0
    # 12 reads at 3 a window: 4 windows. Probing every 0.5-5 s (scaled) costs ~10 429s in the first window;
    # once the window is known the connector waits for it, so the whole run stays far below a 429 per probe tick.
    throttled = small_org.limiter.throttled["project roles"]
    assert throttled < 40, throttled


def test_a_long_run_logs_progress_and_an_estimate(small_org, run_connector):
    small_org.limiter = FixedWindows((60, 0.6), {"project roles": (3, 0.6)})
    result = run_connector("--role-assignments", "none", env=ENV)
    assert result.returncode == 0
    progress = [line for line in result.stderr.splitlines() if " progress: " in line]
    assert progress, result.stderr
    assert re.search(r"progress: \d+ reads done, \d+ open \(.*project roles \d+/12.*\); \d+ calls, \d+ answered 429; "
                     r"slowest endpoint /projects/\{project_id\}/roles at about [\d.]+ requests a minute; about \S+ "
                     r"left", "\n".join(progress)), progress
    assert re.search(r"/projects/proj_\d+/roles: HTTP 429, waiting [\d.]+s \(no retry-after: probing\)", result.stderr)


def test_an_endpoint_throttled_past_the_deadline_fails_the_run_and_pushes_nothing(small_org, run_connector, veza):
    small_org.limiter = AlwaysThrottled({"project roles"})
    result = run_connector("--role-assignments", "none", "--max-throttle-wait", "0.5", env=ENV)
    assert result.returncode == 1, result.output
    assert re.search(r"/projects/proj_\d+/roles: still HTTP 429 past --max-throttle-wait 0.5s", result.stderr), \
        result.stderr
    assert "nothing was pushed" in result.stderr and veza.pushes == []


def test_max_run_time_ends_a_run_that_cannot_finish_in_time(small_org, run_connector, veza):
    small_org.limiter = FixedWindows((60, 0.6), {"project roles": (1, 0.6)})
    result = run_connector("--role-assignments", "none", "--max-run-time", "1", env=ENV)
    assert result.returncode == 1
    # the slowest endpoint is named once one has been throttled (a loaded machine may not get that far in 1 s)
    assert re.search(r"reading took longer than --max-run-time 1s with \d+ reads open"
                     r"(; slowest endpoint /projects/\{project_id\}/roles at about|\n)", result.stderr), result.stderr
    assert veza.pushes == []


def test_auto_decides_on_the_first_custom_role_without_waiting_for_every_project(openai_fake, run_connector):
    openai_fake.org = generate_organization(users=60, projects=8, members=2, service_accounts=0, keys=0, groups=0,
                                            custom_roles=True, org_id="org-demo0001")
    openai_fake.limiter = FixedWindows((600, 0.6), {"project roles": (2, 0.6)})
    result = run_connector("--dry-run", env=ENV)
    assert result.returncode == 0, result.output
    arrivals = [(at, family_of(path)) for at, path, status in openai_fake.timeline if status == 200]
    first_user_roles = min(at for at, family in arrivals if family == "user roles")
    last_project_roles = max(at for at, family in arrivals if family == "project roles")
    assert first_user_roles < last_project_roles - 0.6
    assert "role assignment reads: 60 users and 16 project members so far, one call each" in result.stderr or \
        re.search(r"role assignment reads: \d+ users", result.stderr)


def test_per_endpoint_cap_keeps_every_endpoint_under_its_rate(small_org, clean_payload, run_connector, veza):
    result = run_connector("--role-assignments", "none", "--max-requests-per-minute-per-endpoint", "5", env=ENV)
    assert result.returncode == 0
    assert veza.payloads == [clean_payload]
    by_family: dict[str, list[float]] = {}
    for at, path, _ in small_org.timeline:
        by_family.setdefault(family_of(path), []).append(at)
    assert len(by_family["project roles"]) == 12
    for family, arrivals in by_family.items():
        arrivals.sort()
        for first, sixth in zip(arrivals, arrivals[5:]):  # any 6 requests of one endpoint span a (scaled) minute
            # Arrivals at the server lag the sends by up to a few hundred ms on a busy machine; without the cap
            # six requests of one endpoint arrive within a few ms of each other.
            assert sixth - first >= 60 * SCALE * 0.5, family


def test_every_5xx_is_retried_and_x_should_retry_is_honoured(small_org, clean_payload, run_connector, veza):
    small_org.faults += [Fault(r"^/organization/invites$", status=501, times=2),
                         Fault(r"^/organization/groups$", status=400, headers={"x-should-retry": "true"}, times=1)]
    result = run_connector("--role-assignments", "none", env=ENV)
    assert result.returncode == 0, result.output
    assert veza.payloads == [clean_payload]
    assert "retries=3 " in result.stderr.splitlines()[-1]


def test_x_should_retry_false_fails_at_once(small_org, run_connector, veza):
    small_org.faults.append(Fault(r"^/organization/invites$", status=503, headers={"x-should-retry": "false"},
                                  times=None))
    result = run_connector("--role-assignments", "none", env=ENV)
    assert result.returncode == 1
    assert "/organization/invites: HTTP 503: injected 503" in result.stderr
    assert small_org.calls(r"^/organization/invites$") == 1 and veza.pushes == []


# --- a `next` cursor that is missing -------------------------------------------------------------------

def test_a_missing_next_cursor_falls_back_to_the_last_item_id_where_the_sdk_documents_it(
        openai_fake, run_connector, veza, fault_free_payload):
    openai_fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="no_cursor", times=1))
    result = run_connector("--role-assignments", "none", "--debug")
    assert result.returncode == 0, result.output
    assert veza.payloads == [fault_free_payload("--role-assignments", "none")]
    assert openai_fake.calls(r"^/organization/groups/group_eng/users$") == 2
    assert "has_more without next; continuing after the last item's id" in result.stderr


def test_a_missing_next_cursor_on_other_lists_still_stops_the_run(openai_fake, run_connector, veza):
    openai_fake.faults.append(Fault(r"^/organization/roles$", kind="no_cursor", times=1))
    result = run_connector("--role-assignments", "none")
    assert result.returncode == 1
    assert "/organization/roles: has_more is true but the page has no cursor" in result.stderr
    assert veza.pushes == []
