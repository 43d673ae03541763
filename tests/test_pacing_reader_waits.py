"""Waits and deadlines while reading: Retry-After hints, 5xx backoff, per-endpoint caps and --max-run-time."""

from __future__ import annotations

import json
import time

import pytest
from conftest import NO_ROLE_READS
from fake_limits import AlwaysThrottled, FixedWindows
from fake_openai import Fault, generate_organization

import veza_openai as vo


@pytest.fixture
def small_org(openai_fake):
    openai_fake.org = generate_organization(users=40, projects=6, members=2, service_accounts=1, keys=1, groups=2,
                                            group_members=3, org_id="org-demo0001")
    return openai_fake


class HintedFixedWindows(FixedWindows):
    """FixedWindows whose 429 says exactly when the window refills (`retry-after-ms`, scaled as the models do)."""

    def __init__(self, *args, time_scale: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.time_scale = time_scale

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        refused = super()._admit(family, now)
        if refused is None:
            return None
        start, _ = self._windows[family]
        _, window = self.limits(family)
        return {"retry-after-ms": str(max(1, round((start + window - now) * 1000 / self.time_scale)))}


def test_retry_after_headers_are_read_in_both_units_and_a_bad_one_hides_no_good_one():
    hint = vo.retry_hint
    assert hint({"retry-after-ms": "250"}) == (0.25, False)
    assert hint({"retry-after": "3"}) == (3.0, True)
    assert hint({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None  # past
    assert hint({"retry-after": "0"}) is None and hint({}) is None
    assert hint({"retry-after-ms": "soon", "retry-after": "2"}) == (2.0, True)  # an invalid ms hides nothing
    assert hint({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})[0] > 10 ** 11  # obeyed, then judged


def test_the_servers_requested_wait_is_honoured(run_connector, openai_fake):
    openai_fake.faults += [Fault(r"^/organization/invites$", status=429, headers={"retry-after-ms": "1500"}),
                           Fault(r"^/organization/groups$", status=429, headers={"retry-after": "3600"})]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "/organization/invites: HTTP 429, waiting 1.5s with retry-after 1.5s" in result.stderr
    assert "/organization/groups: HTTP 429, waiting 3600.0s with retry-after 3600s" in result.stderr


def test_max_run_time_ends_a_run_whose_only_open_read_is_throttled_forever(small_org, run_connector, veza):
    """Every read done except one endpoint that answers 429 forever, with a long --max-throttle-wait: the
    reader waits on that endpoint's probes and must still notice --max-run-time within about a second."""
    small_org.limiter = AlwaysThrottled({"project roles"})
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--max-run-time", "1", "--max-throttle-wait", "3600",
                           env={"VEZA_OPENAI_TIME_SCALE": "1"}, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert "reading took longer than --max-run-time 1s" in result.stderr
    assert elapsed < 8, elapsed
    assert veza.pushes == []


def test_a_family_left_out_whole_is_not_failed_by_its_other_reads_still_in_5xx_backoff(
        small_org, run_connector, veza):
    """README: a 403 on a family leaves 'that family ... out whole'. Its other requests still waiting in the
    5xx backoff (or in flight) belong to a family the run has given up on: when they run out of retries they
    must not fail the run, and the rest is pushed."""
    pids = [p["id"] for p in small_org.org.projects]
    small_org.faults.append(Fault(rf"^/organization/projects/{pids[0]}/api_keys$", status=503, times=None))
    small_org.faults.append(Fault(rf"^/organization/projects/{pids[1]}/api_keys$", status=403, times=None))
    result = run_connector(*NO_ROLE_READS, "--max-retries", "3", "--max-throttle-wait", "0.3",
                           env={"VEZA_OPENAI_TIME_SCALE": "0.05"}, timeout=30)
    assert result.returncode == 0, result.output
    assert "left out project API keys (HTTP 403" in result.stderr
    assert len(veza.payloads) == 1


@pytest.mark.parametrize("hint", [{"retry-after": "0"}, {"retry-after": "Thu, 01 Jan 2015 00:00:00 GMT"},
                                  {"retry-after-ms": "nan"}], ids=["zero", "a date already past", "nan ms"])
def test_a_zero_retry_after_is_not_followed_by_an_immediate_resend_loop(openai_fake, run_connector, veza, hint):
    """A 429 with `retry-after: 0` (or an HTTP date already past, or a negative value) is no licence to re-send
    at once, again and again, for up to --max-throttle-wait: that would hammer a rate-limited API. The
    official SDK ignores a retry-after outside (0, 60] and backs off instead; so does the connector."""
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=429, headers=hint, times=None))
    result = run_connector(*NO_ROLE_READS, "--max-throttle-wait", "0.5", env={"VEZA_OPENAI_TIME_SCALE": "1"},
                           timeout=30)
    assert result.returncode == 1, result.output
    calls = openai_fake.calls(r"^/organization/invites$")
    # Backing off from 0.5 s doubling to 5 s: 2 calls in half a second (a resend loop makes hundreds). Allow ten.
    assert calls <= 10, f"{calls} requests to one throttled endpoint in 0.5 s"


def test_the_per_endpoint_cap_holds_over_every_sliding_minute(small_org, run_connector, veza, monkeypatch):
    """--max-requests-per-minute-per-endpoint 2 (a 0.6 s 'minute' at this scale): no endpoint is sent more
    than 2 requests in any sliding window, and the run completes.

    The times checked are the ones the connector sends at (its pacer's clock), not the fake's arrival times:
    on a loaded machine a request can reach the fake late while the next one does not, which would make the
    check depend on load. Every request the fake saw went through the pacer, so none escaped the cap."""
    sends: dict[int, list[float]] = {}
    on_send = vo.Lane.on_send

    def recorded_on_send(lane, now):
        sends.setdefault(id(lane), []).append(now)
        return on_send(lane, now)

    monkeypatch.setattr(vo.Lane, "on_send", recorded_on_send)
    scale = 0.01
    result = run_connector(*NO_ROLE_READS, "--max-requests-per-minute-per-endpoint", "2",
                           env={"VEZA_OPENAI_TIME_SCALE": str(scale)}, timeout=60)
    assert result.returncode == 0, result.output
    window = 60 * scale
    assert sum(len(times) for times in sends.values()) == len(small_org.timeline)
    for path, times in sends.items():
        times.sort()
        for i in range(2, len(times)):
            assert times[i] - times[i - 2] >= window - 1e-9, (path, times)
    assert any(len(times) >= 6 for times in sends.values())  # the cap was exercised


def test_max_run_time_ends_a_run_whose_workers_are_all_stuck_on_dripping_answers(openai_fake, run_connector, veza):
    """Every worker busy on an answer that drips for longer than --timeout: --max-run-time still ends the run
    within about a second of the limit (the wait on answers is capped at 1 s)."""
    openai_fake.faults.append(Fault(r"^/organization/", kind="drip", delay=0.5, times=None))
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--max-run-time", "1", "--timeout", "60", "--max-workers", "2",
                           env={"VEZA_OPENAI_TIME_SCALE": "1"}, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert "reading took longer than --max-run-time 1s" in result.stderr
    assert elapsed < 5, elapsed
    assert veza.pushes == []


def test_a_minute_window_that_sends_retry_after_is_met_near_its_bound(openai_fake, run_connector, veza):
    """README (Rate limits): 'A hint is followed exactly ... No extra slow-down on top'. A fixed window that
    sends retry-after when it refills is met near its bound: spacing every later request by the whole window
    would give an endpoint allowed 4 a window about one a window instead."""
    scale = 0.01
    openai_fake.org = generate_organization(users=20, projects=12, members=1, service_accounts=0, keys=0, groups=0,
                                            group_members=0, org_id="org-demo0001")
    limiter = HintedFixedWindows((1000, 0.6), {"project users": (4, 0.6)}, time_scale=scale)
    openai_fake.limiter = limiter
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, env={"VEZA_OPENAI_TIME_SCALE": str(scale)}, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert limiter.throttled["project users"] > 0
    bound = limiter.bound({"project users": 12})  # 3 windows of 4: 1.2 s; one a window would take 6.6 s
    assert elapsed <= 1.5 * bound + 1.0, f"{elapsed:.1f}s against a bound of {bound:.1f}s"


def test_progress_estimates_time_left_for_an_endpoint_paced_by_retry_after_hints(openai_fake, run_connector, veza):
    """README (Rate limits): a progress line gives 'the slowest endpoint's learned rate, an estimate of the time
    left for the reads known so far', also for an endpoint the server paces with retry-after: while its open
    reads still need seconds (here ~0.1 s each), the estimate is not 'about 0s left'."""
    scale = 0.01
    openai_fake.org = generate_organization(users=20, projects=24, members=1, service_accounts=0, keys=0, groups=0,
                                            group_members=0, org_id="org-demo0001")
    openai_fake.limiter = HintedFixedWindows((1000, 0.6), {"project users": (6, 0.6)}, time_scale=scale)
    result = run_connector(*NO_ROLE_READS, "--log-format", "json", env={"VEZA_OPENAI_TIME_SCALE": str(scale)},
                           timeout=60)
    assert result.returncode == 0, result.output
    progress = [entry for entry in map(json.loads, result.stderr.splitlines()) if entry.get("stage") == "progress"]
    busy = [entry for entry in progress if entry["reads_open"] >= 8]
    assert busy, progress
    assert any((entry["seconds_left_estimate"] or 0) >= 1 for entry in busy), busy  # None: no rate seen yet
