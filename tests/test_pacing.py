"""How requests are paced: each endpoint's lane, the rules docs/rate-limits.md states, on an explicit clock.

A lane is pure bookkeeping on `now` (seconds), so these tests drive lanes by hand; a few drive the scheduler's
pure parts, and one a real read, asserting counts and CPU, never timings.
"""

from __future__ import annotations

import math
import time

import pytest
from fake_limits import FixedWindows, TokenBucket
from fake_openai import Fault, generate_organization

import veza_openai as vo

NO_ROLE_READS = ("--role-assignments", "none")


def lanes(*names: str, scale: float = 1.0, per_minute: int | None = None) -> vo.Lanes:
    return vo.Lanes(names or ("x",), scale, per_minute)


def succeed(lane: vo.Lane, at: float, answered: float | None = None) -> None:
    lane.on_send(at)
    lane.on_success(answered if answered is not None else at, at)


# --- starting, and after a 429 ----------------------------------------------------------------------------

def test_an_endpoint_starts_with_one_request_in_flight_and_one_more_per_success():
    lane = lanes()["x"]
    assert lane.ready_at(0.0) == 0.0
    lane.on_send(0.0)
    assert lane.ready_at(0.0) == math.inf  # one in flight, no success yet
    lane.on_success(0.01, 0.0)
    lane.on_send(0.01)
    assert lane.ready_at(0.01) == 0.01  # one success: two may be in flight
    lane.on_send(0.01)
    assert lane.ready_at(0.01) == math.inf


def test_after_a_429_an_endpoint_sends_one_request_at_a_time_until_one_gets_through():
    lane = lanes()["x"]
    for at in range(5):
        succeed(lane, at * 0.01)
    lane.on_send(0.05)
    lane.on_send(0.05)
    lane.on_throttled(0.06, 0.05, None, False)
    lane.answered()  # the other one: a 5xx, say
    at = lane.ready_at(0.06)
    lane.on_send(at)
    assert lane.ready_at(at) == math.inf  # the retry goes alone
    lane.on_success(at + 0.01, at)
    assert lane.ready_at(at + 0.01) < math.inf


def test_a_hint_is_obeyed_never_below_the_floor_and_a_whole_second_one_holds_the_endpoint_a_second_less():
    lane = lanes()["x"]
    lane.on_send(0.0)
    assert lane.on_throttled(0.0, 0.0, 2.0, False) == pytest.approx(2.0)  # the refused request waits the hint
    assert lane.ready_at(0.0) == pytest.approx(2.0)  # and so does the endpoint: nothing gets through before
    other = lanes()["x"]
    other.on_send(0.0)
    assert other.on_throttled(0.0, 0.0, 3.0, True) == pytest.approx(3.0)  # retry-after: 3 may mean 2.01
    assert other.ready_at(0.0) == pytest.approx(2.0)
    tiny = lanes()["x"]
    tiny.on_send(0.0)
    assert tiny.on_throttled(0.0, 0.0, 0.001, False) == pytest.approx(vo.FLOOR)  # "1 ms" is no pace to keep


def test_without_a_hint_and_before_any_cycle_is_measured_retries_double_in_time_since_the_first_request():
    lane = lanes(scale=0.01)["x"]
    lane.on_send(0.0)
    times, now = [], 0.0
    for _ in range(6):
        now = lane.on_throttled(now, now, None, False)
        times.append(round(now / 0.01, 6))
        now = lane.ready_at(now)
        lane.on_send(now)
    assert times == [vo.FLOOR * 2 ** n for n in range(6)]  # the same at every time scale


def test_answers_to_requests_sent_before_the_first_429_do_not_lengthen_the_wait():
    lane = lanes()["x"]
    for _ in range(3):
        lane.on_send(0.0)
    first = lane.on_throttled(0.1, 0.0, None, False)
    assert lane.on_throttled(0.1, 0.0, None, False) == first == lane.on_throttled(0.1, 0.0, None, False)


def test_a_429_forever_sends_a_handful_of_requests_not_hundreds():
    lane = lanes()["x"]
    sent, now = 0, 0.0
    while now < 60:
        now = lane.ready_at(now)
        lane.on_send(now)
        sent += 1
        lane.on_throttled(now, now, 0.001, False)
    assert sent < 15  # each retry waits twice the last: about log2(60 s / FLOOR), never a flood


def test_a_success_of_a_request_sent_before_the_429_ends_no_wait():
    """Answers come back out of order: one the limit let through before it ran out says nothing about now, but
    counts in the cycle the next recovery measures."""
    lane = lanes()["x"]
    succeed(lane, 0.0)
    lane.on_send(0.1)
    lane.on_send(0.1)
    lane.on_throttled(0.2, 0.1, None, False)
    assert lane.on_success(0.25, 0.1) is False  # sent before the 429 came back
    assert lane.refused_since == 0.2 and lane.ready_at(0.25) > 0.25  # still waiting, one at a time
    retry = lane.ready_at(0.25)
    succeed(lane, retry)
    assert lane.measured == pytest.approx(2 / retry)  # the first success and the late one


def test_retry_waits_grow_to_at_most_an_eighth_of_the_last_measured_cycle():
    """A window that refilled is found within an eighth of its length, however long the 429s went on."""
    lane = lanes()["x"]
    for at in range(16):
        succeed(lane, at / 4)
    lane.on_send(4.0)
    lane.on_throttled(4.0, 4.0, None, False)
    succeed(lane, 8.0)  # recovered: a cycle of 8 s measured
    assert lane.cycle == 8.0
    lane.on_send(9.0)
    waits, now = [], 9.0
    for _ in range(12):
        due = lane.on_throttled(now, now, None, False)
        waits.append(due - now)
        now = due
        lane.on_send(now)
    assert max(waits) == pytest.approx(8.0 / vo.PROBES) and waits[-1] == waits[-2]


def test_endpoints_retry_out_of_step_and_one_getting_through_wakes_those_that_measured_nothing():
    """Windows an earlier run spent refill together: refused endpoints retry at different points of a doubling,
    so together they probe often; the first let through wakes the others refused without a hint and with no cycle
    of their own (at once while no cycle is known, else within 1/PROBES of the longest one)."""
    shared = lanes("a", "b", "c", "d", "hinted", "measured")
    shared["measured"].cycle = 5.0
    retries = {}
    for name in ("a", "b", "c", "d", "hinted", "measured"):
        shared[name].on_send(0.0)
        retries[name] = shared[name].on_throttled(0.01, 0.0, 5.0 if name == "hinted" else None, False)
    out_of_step = [retries[name] for name in "abcd"]
    assert len(set(out_of_step)) == 4 and all(0.01 + vo.FLOOR <= at < 2 * (0.01 + vo.FLOOR) for at in out_of_step)
    for name in ("a", "c", "d", "hinted", "measured"):
        shared[name].next_at = 10.0  # still waiting, long after b's retry
    b = shared["b"]
    at = b.ready_at(0.0)
    b.on_send(at)
    assert b.on_success(at + 0.01, at) is True
    woken = shared.wake(at + 0.01)
    assert set(woken) == {"a", "c", "d"}  # not the hinted one, not one that measured a cycle
    assert woken["a"] == pytest.approx(at + 0.01 + vo.FLOOR) == shared["a"].ready_at(at + 0.01)
    a = shared["a"]
    before = a.on_grid(10.0)  # where it would have retried
    a.on_send(woken["a"])
    assert a.on_throttled(woken["a"] + 0.01, woken["a"], None, False) <= before + 1e-9  # refused: no later
    shared.cycle = 8.0
    c = shared["c"]
    c.next_at = 100.0
    assert shared.wake(50.0)["c"] == pytest.approx(50.0 + 8.0 / vo.PROBES)


# --- the pace: what got through, then a little more -----------------------------------------------------

def test_the_first_success_after_a_429_paces_the_endpoint_just_under_what_got_through():
    lane = lanes()["x"]
    for at in (0.0, 0.1, 0.2, 0.3):  # four successes in the cycle that began at the first send
        succeed(lane, at)
    lane.on_send(0.4)
    lane.on_throttled(0.4, 0.4, None, False)
    retry = lane.ready_at(0.4)
    succeed(lane, retry)  # recovered: 4 got through between the sends at 0 and `retry`
    assert lane.measured == pytest.approx(4 / retry)
    assert lane.rate == pytest.approx(vo.MARGIN * 4 / retry)


def test_a_429_never_cuts_a_pace_below_half_of_what_it_was():
    lane = lanes()["x"]
    lane.rate, lane.measured, lane.cycle_start, lane.delivered = 100.0, 100.0, 0.0, 1
    lane.on_send(1.0)
    lane.on_throttled(1.0, 1.0, None, False)
    succeed(lane, 9.0)  # one success in nine seconds: 0.11 a second
    assert lane.rate == pytest.approx(50.0)


def test_a_pace_grows_fast_below_the_last_measurement_and_slowly_near_it():
    lane = lanes()["x"]
    lane.measured, lane.rate, lane.cycle_start = 10.0, 2.0, 0.0
    succeed(lane, 1.0)
    assert lane.rate == pytest.approx(2.0 * (1 + vo.GROW_BELOW))
    lane.rate = 10.0
    succeed(lane, 2.0)
    assert lane.rate == pytest.approx(10.0 * (1 + vo.GROW_NEAR))


# --- what endpoints share ------------------------------------------------------------------------------

def test_only_one_retry_after_a_429_is_out_at_a_time_across_endpoints():
    shared = lanes("a", "b")
    a, b = shared["a"], shared["b"]
    for lane in (a, b):
        lane.on_send(0.0)
        lane.on_throttled(0.0, 0.0, None, False)
    at = max(a.ready_at(1.0), b.ready_at(1.0))
    a.on_send(at)
    assert b.ready_at(at) == math.inf  # a's retry is out
    a.on_success(at + 0.01, at)
    assert b.ready_at(at + 0.01) <= at + 0.01
    fresh = lanes("a", "c")
    fresh["a"].on_send(0.0)
    fresh["a"].on_throttled(0.0, 0.0, None, False)
    fresh["a"].on_send(1.0)
    assert fresh["c"].ready_at(1.0) == 1.0  # an endpoint never refused is not held back


def test_an_endpoint_that_finished_shares_its_pace_out_among_those_still_paced():
    shared = lanes("a", "b", "c", "d")
    shared["a"].rate, shared["b"].rate, shared["c"].rate = 10.0, 10.0, 30.0
    shared.finished("a", ["b", "c", "d"])
    assert (shared["a"].rate, shared["b"].rate, shared["c"].rate, shared["d"].rate) == (None, 12.5, 37.5, None)


def test_the_per_minute_cap_holds_over_a_sliding_minute():
    lane = lanes(per_minute=3)["x"]
    for at in (0.0, 1.0, 2.0):
        assert lane.ready_at(at) == at
        succeed(lane, at)
    assert lane.ready_at(3.0) == 60.0
    assert lane.ready_at(61.5) == 61.5
    assert lane.requests_per_second() == pytest.approx(3 / 60)


# --- the same rules at every time scale (a simulated limit, no sockets) -----------------------------------

def simulate(limiter, scale: float, reads: int, latency: float) -> tuple[float, int]:
    """One endpoint reading `reads` pages through `limiter`, two workers: (time taken, 429s)."""
    lane, now, done, sent, throttled = lanes(scale=scale)["x"], 0.0, 0, [], 0
    while done < reads:
        free = [lane.ready_at(now)] if len(sent) < 2 else []  # with both workers busy, only an answer counts
        now = max(now, min(free + [at for at, _ in sent]))
        sent.sort()
        while sent and sent[0][0] <= now:
            at, send = sent.pop(0)
            if limiter.admit("x", send) is None:
                lane.on_success(at, send)
                done += 1
            else:
                throttled += 1
                lane.on_throttled(at, send, None, False)
        if len(sent) < 2 and lane.ready_at(now) <= now:
            lane.on_send(now)
            sent.append((now + latency, now))
    return now, throttled


def test_a_window_and_a_token_bucket_are_met_near_their_bound_the_same_at_every_time_scale():
    """Nothing assumes a minute: scaled by 1/100, a limit gives the same run, 1/100 as long."""
    runs = {}
    for scale in (1.0, 0.01):
        window, bucket = FixedWindows((20, 60 * scale)), TokenBucket(40 / scale, 10, None)
        runs[scale] = [(*simulate(limit, scale, 400, latency * scale), limit.bound({"x": 400}))
                       for limit, latency in ((window, 0.05), (bucket, 0.005))]
    for (took, throttled, bound), (small_took, small_throttled, _) in zip(runs[1.0], runs[0.01]):
        assert took <= 1.3 * bound and throttled <= 0.25 * 400, (took / bound, throttled)
        assert small_throttled == throttled and small_took == pytest.approx(took * 0.01)


# --- waiting costs no CPU; estimates count only rates seen -----------------------------------------------

def reader(config: vo.Config, scale: float = 1.0) -> vo.Scheduler:
    http = vo.Http(config.openai_base_url, config.openai_api_key, timeout=30, max_bytes=2 ** 25)
    return vo.Scheduler(http, config, vo.Clock(scale), vo.FAMILY_LIST)


def test_max_requests_per_second_waits_without_spending_cpu(openai_fake):
    """The reader's own thread, over a run that --max-requests-per-second stretches to seconds, spends a small
    fraction of that on the CPU (a busy wait spends nearly all of it, even on a loaded machine)."""
    config = vo.Config(org_id=openai_fake.org.org_id, openai_api_key=openai_fake.admin_key,
                       openai_base_url=openai_fake.base_url, max_requests_per_second=20.0, role_assignments="none")
    scheduler = reader(config)
    wall, cpu = time.monotonic(), time.thread_time()
    vo.ReadPlan(config, scheduler).read()
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert scheduler.calls >= 20 and wall >= (scheduler.calls - 1) / 20 * 0.9  # the cap did stretch the run
    assert cpu < 0.25 * wall, f"{cpu:.2f}s of CPU in {wall:.2f}s of waiting"


def reader_for_estimates(succeeded: int) -> vo.Scheduler:
    config = vo.Config(org_id="org-x", openai_api_key="sk-admin-x", openai_base_url="http://127.0.0.1:9")
    scheduler = reader(config)
    scheduler.clock.started = time.monotonic() - 10
    scheduler.open_reads["user_roles"] = 5000
    scheduler.succeeded = succeeded
    return scheduler


def test_no_time_left_is_estimated_before_any_rate_is_seen():
    assert reader_for_estimates(19).estimate_seconds_left() is None


def test_thousands_of_open_reads_and_no_429_are_counted_at_the_rate_calls_succeed():
    # 100 calls in 10 s: 10 a second, so 5,000 reads take about 500 s, not "about 0s left"
    assert reader_for_estimates(100).estimate_seconds_left() == pytest.approx(500, rel=0.05)


def test_the_role_read_estimate_waits_for_the_user_list(openai_fake, run_connector, veza):
    openai_fake.org = generate_organization(users=250, projects=3, members=2, service_accounts=0, keys=0, groups=0,
                                            org_id="org-demo0001")
    openai_fake.latency = 0.01  # three pages of users, one of roles: the decision comes before the users
    result = run_connector("--role-assignments", "all", "--dry-run")
    assert result.returncode == 0, result.output
    [line] = [line for line in result.stderr.splitlines() if "role assignment reads:" in line]
    assert "role assignment reads: 250 users and " in line, line
    assert "about 0s" not in line


def test_a_429_with_a_hint_past_max_throttle_wait_fails_at_once_naming_the_hint(run_connector, openai_fake, veza):
    """A retry-after of a day (or a date in year 9999) ends the run at once, not at --max-run-time."""
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=429, headers={"retry-after": "86400"},
                                    times=None))
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--max-throttle-wait", "60", env={"VEZA_OPENAI_TIME_SCALE": "1"})
    assert result.returncode == 1 and time.monotonic() - started < 30
    assert "/organization/invites: HTTP 429 with retry-after 86400s, which ends past " \
           "--max-throttle-wait 60s" in result.stderr
    assert veza.pushes == []
