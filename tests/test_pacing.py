"""How requests are paced: a limit shared by every endpoint, retry hints too small to follow, waits that cost
no CPU, and estimates of the time left that count every open read at a rate actually seen.

The pacers are pure bookkeeping on an explicit clock (`now`, real seconds), so most tests here drive them
by hand; the few end-to-end runs assert counts with wide margins, never timings.
"""

from __future__ import annotations

import time

import pytest
from fake_openai import Fault, generate_organization

import veza_openai as vo

NO_ROLE_READS = ("--role-assignments", "none")


# --- a limit shared by every endpoint ----------------------------------------------------------------

def started_endpoints(shared: vo.SharedPacer, names: list[str], at: float) -> bool:
    """A first 429 on each of `names`, endpoints that had just started; True once that made the limit shared."""
    return any([shared.note_evidence(name, at) for name in names])


def test_first_429s_on_three_endpoints_at_once_make_the_limit_shared_and_paced_at_the_rate_seen():
    shared = vo.SharedPacer()
    for at in (0.0, 0.1, 0.2, 0.3, 0.4):  # five successes, then three endpoints refused on their first request
        shared.on_success(at)
    assert not started_endpoints(shared, ["invites", "groups"], 0.5) and not shared.active
    assert shared.ready_at(0.5) == 0.5  # off: nothing is paced together
    assert started_endpoints(shared, ["roles"], 0.6) and shared.active
    # no success since the first of those 429s: the pace starts at one per span/5 (2 s), slow and safe
    assert shared.rate == pytest.approx(1 / (vo.SHARED_EVIDENCE_SPAN / 5))
    shared.on_send(0.6)
    assert shared.ready_at(0.6) == pytest.approx(0.6 + 1 / shared.rate)


def test_first_429s_spread_over_more_than_the_span_are_not_a_shared_limit():
    shared = vo.SharedPacer()
    for index, name in enumerate(["invites", "groups", "roles", "projects"]):
        assert not shared.note_evidence(name, index * (vo.SHARED_EVIDENCE_SPAN + 1))
    assert not shared.active


def test_an_endpoint_that_spent_its_own_allowance_is_no_evidence_of_a_shared_limit():
    pacer = vo.EndpointPacer("/x")
    for at in (0.0, 0.1):
        pacer.on_send(at)
        pacer.on_success(at + 0.05, probe=False)
    assert not pacer.just_started()  # two successes, then a 429: it may be its own limit running out
    fresh = vo.EndpointPacer("/y")
    fresh.on_send(0.0)
    fresh.on_success(0.05, probe=False)
    assert fresh.just_started()  # one success, then a 429: refused by something it did not spend
    fresh.on_send(0.3)
    fresh.on_throttled(0.35, probe=False, server_wait=None)
    assert not fresh.just_started()  # after its own first 429, its 429s are its own


def active_shared(rate: float) -> vo.SharedPacer:
    shared = vo.SharedPacer()
    shared.start(0.0, rate)
    return shared


def test_a_429_cuts_the_pace_by_ten_percent_or_down_to_the_rate_that_got_through():
    pace = active_shared(rate=100.0)
    for index in range(40):  # 40 successes in 2 s: the limit let 20 a second through, far below the pace
        pace.on_success(index * 0.05)
    pace.on_throttled(2.0, sent_at=1.99)
    assert pace.rate == pytest.approx(100 * vo.PACE_MAX_CUT)  # down toward 20, by half at most
    pace.on_throttled(2.01, sent_at=1.98)  # sent before the last cut: already accounted for
    assert pace.rate == pytest.approx(50.0)
    pace.on_throttled(2.02, sent_at=2.005)  # too few successes since the last 429 to measure: cut by 30%
    assert pace.rate == pytest.approx(50.0 * vo.PACE_UNMEASURED_CUT)
    for index in range(35):  # 35 a second got through, as paced: only just above the limit
        pace.on_success(2.02 + (index + 1) / 35)
    pace.on_throttled(3.03, sent_at=3.0)
    assert pace.rate == pytest.approx(35.0 * vo.PACE_CUT)


def test_a_pace_rises_only_while_it_holds_requests_back_and_successes_keep_up():
    pace = active_shared(rate=10.0)
    for index in range(vo.PACE_MIN_SAMPLE):  # ten a second, as paced
        pace.on_success((index + 1) * 0.1)
    assert pace.rate == 10.0  # nothing waited for it: the pace says nothing about the limit
    pace.held_back = True
    pace.on_success(0.9)
    assert 10.0 * (1 + vo.PACE_PROBE_UP) <= pace.rate < 10.0 * (1 + 2 * vo.PACE_PROBE_UP)  # slowly
    slow = active_shared(rate=10.0)
    for index in range(20):  # two a second: something else holds requests back, not the pace
        slow.held_back = True
        slow.on_success((index + 1) * 0.5)
    assert slow.rate == 10.0


def test_a_limit_that_doubled_is_found_again_within_about_a_hundred_successes():
    pace = active_shared(rate=10.0)
    now = 0.0
    for _ in range(110):  # requests go as fast as the pace allows and every one succeeds
        now = pace.ready_at(now)
        pace.on_send(now)
        pace.held_back = True
        pace.on_success(now)
    assert pace.rate >= 20.0


def test_a_precise_hint_pauses_the_pace_and_a_whole_second_one_a_second_less():
    pace = active_shared(rate=1000.0)
    pace.pause_for(1.0, hint=0.25, whole_seconds=False)
    assert pace.ready_at(1.0) == pytest.approx(1.25)
    pace = active_shared(rate=1000.0)
    pace.pause_for(1.0, hint=3.0, whole_seconds=True)  # "retry-after: 3" may mean 2.01 s
    assert pace.ready_at(1.0) == pytest.approx(3.0)
    pace = active_shared(rate=1000.0)
    pace.pause_for(1.0, hint=1.0, whole_seconds=True)  # may mean a millisecond: no pause for everything
    assert pace.ready_at(1.0) == pytest.approx(1.0)


def test_an_endpoint_paces_itself_from_its_own_429s_until_it_learns_a_window():
    pacer = vo.EndpointPacer("/x")
    for index in range(10):  # ten in the first 0.1 s, then a 429 with a hint
        pacer.on_send(index * 0.01)
        pacer.on_success(index * 0.01 + 0.005, probe=False)
    pacer.on_send(0.1)
    pacer.on_throttled(0.1, probe=False, server_wait=0.05, sent_at=0.1)
    assert pacer.pace.active and pacer.pace.rate == pytest.approx(10 / 0.1)
    assert pacer.ready_at(0.11) == pytest.approx(0.15)  # the hint first


def test_a_repeated_429_on_one_endpoint_with_no_other_refused_is_that_endpoints_own():
    shared = active_shared(rate=50.0)
    assert shared.owns("project roles", 1.0)  # its first 429: the shared limit's
    shared.last_429["project roles"] = 1.0
    shared.on_success(1.01)
    assert not shared.owns("project roles", 1.02)  # again, and nobody else was refused meanwhile
    shared.last_429["users"] = 1.03
    assert shared.owns("project roles", 1.04)  # others refused too: the shared limit again
    assert shared.owns("project roles", 1.0 + vo.SHARED_EVIDENCE_SPAN + 1)  # long after: news again


# --- what one endpoint's limit says about the others ---------------------------------------------------

def spend_allowance(pacer: vo.EndpointPacer, successes: int, at: float = 0.0) -> None:
    """`successes` requests sent and answered, then one more refused with no hint."""
    for index in range(successes):
        pacer.on_send(at + index * 0.001)
        pacer.on_success(at + index * 0.001 + 0.0005, probe=False)
    pacer.on_send(at + successes * 0.001)
    pacer.on_throttled(at + successes * 0.001 + 0.0005, probe=False, server_wait=None)


def test_past_an_allowance_another_endpoint_had_requests_go_one_at_a_time_then_grow_back_one_per_success():
    priors = vo.LimitPriors()
    spend_allowance(vo.EndpointPacer("/a", priors=priors), 20)
    fresh = vo.EndpointPacer("/b", priors=priors)
    for _ in range(20):  # the first twenty go as fast as workers allow
        assert fresh.ready_at(1.0) == 1.0
        fresh.on_send(1.0)
    assert fresh.ready_at(1.0) == float("inf")  # the 21st waits for every answer, then goes alone
    for _ in range(20):
        fresh.on_success(1.01, probe=False)
    for _ in range(26 - 20):  # 21st to 26th: one at a time, each after the answer to the one before
        assert fresh.ready_at(1.02) == 1.02
        fresh.on_send(1.02)
        assert fresh.ready_at(1.02) == float("inf")
        fresh.on_success(1.03, probe=False)
    fresh.on_send(1.04)  # 26 got through, more than the other's allowance and a quarter: no longer alone...
    assert fresh.ready_at(1.04) == 1.04
    fresh.on_send(1.04)
    assert fresh.ready_at(1.04) == float("inf")  # ...but two at once, then one more per success
    fresh.on_success(1.05, probe=False)
    for _ in range(2):
        assert fresh.ready_at(1.05) == 1.05
        fresh.on_send(1.05)
    assert fresh.ready_at(1.05) == float("inf")


def test_an_endpoint_refused_on_its_first_or_second_request_sets_no_allowance_for_the_others():
    priors = vo.LimitPriors()
    spend_allowance(vo.EndpointPacer("/a", priors=priors), 1)  # a shared limit's, most likely
    fresh = vo.EndpointPacer("/b", priors=priors)
    for _ in range(8):
        fresh.on_send(1.0)
    assert fresh.ready_at(1.0) == 1.0


def test_once_an_endpoint_learned_a_window_another_probes_once_quickly_then_shortly_before_that_window():
    priors = vo.LimitPriors()
    learned = vo.EndpointPacer("/a", priors=priors)
    spend_allowance(learned, 7)
    learned.on_send(60.0)
    learned.on_success(60.0, probe=True)  # refilled 60 s after its burst began: a window
    assert priors.window_seconds == pytest.approx(60.0)
    other = vo.EndpointPacer("/b", priors=priors)
    spend_allowance(other, 20, at=100.0)
    first_probe = other.ready_at(100.03)
    assert first_probe == pytest.approx(100.0205 + vo.PROBE_FIRST_WAIT)  # a fast refill is still seen quickly
    other.on_send(first_probe)
    other.on_throttled(first_probe, probe=True, server_wait=None)
    assert other.ready_at(first_probe) == pytest.approx(100.0 + vo.REFILL_LEAD * 60.0)


def refuse_probe(pacer: vo.EndpointPacer, now: float) -> float:
    """The next probe goes when the pacer allows, and is refused; returns when it went."""
    at = max(now, pacer.ready_at(now))
    assert pacer.on_send(at) is True
    pacer.on_throttled(at, probe=True, server_wait=None, sent_at=at)
    return at


def test_a_limit_that_refilled_in_moments_is_paced_no_faster_than_its_latest_refused_probe_allowed():
    """A bucket with no hint: twenty at once, then a 429. The pace that 429 starts from is the burst's
    (about a thousand a second); a probe refused 15 ms after the 429 says fewer than one request gets through
    in 15 ms. Once a probe gets through, requests go no faster than that, the next one a whole interval after
    the probe (not at once beside another), instead of a 429 for each cut of the pace on the way down."""
    pacer = vo.EndpointPacer("/a", time_scale=0.01)
    spend_allowance(pacer, 20, at=0.0)
    exhausted = 20 * 0.001 + 0.0005
    refused = refuse_probe(pacer, refuse_probe(pacer, exhausted))
    probe = pacer.ready_at(refused)
    assert pacer.on_send(probe) is True
    pacer.on_success(probe + 0.001, probe=True)
    interval = refused - exhausted
    assert pacer.pace.rate <= 1 / interval * 1.001
    assert pacer.ready_at(probe + 0.001) >= probe + interval * 0.999


def test_a_settled_pace_is_not_slowed_by_a_refused_probe():
    """Once 429s have cut a pace a few times it is near the limit: a refused probe then says more about when a
    short window refills all at once than about the rate, and the pace is left as it was."""
    pacer = vo.EndpointPacer("/a", time_scale=0.01)
    spend_allowance(pacer, 20, at=0.0)
    pacer.pace.throttled = vo.PACE_SETTLED_AFTER
    rate = pacer.pace.rate
    refused = refuse_probe(pacer, refuse_probe(pacer, 20 * 0.001 + 0.0005))
    probe = pacer.ready_at(refused)
    assert pacer.on_send(probe) is True
    pacer.on_success(probe + 0.001, probe=True)
    assert pacer.pace.rate == rate


def two_endpoints_refused_a_second_apart(follower_allowance: int = 30) -> tuple[vo.LimitPriors, vo.EndpointPacer,
                                                                                vo.EndpointPacer]:
    """A leader and a follower sharing priors, the leader past its 20-request allowance, the follower past its own
    (another by default) a second later."""
    priors = vo.LimitPriors()
    leader, follower = vo.EndpointPacer("/a", priors=priors), vo.EndpointPacer("/b", priors=priors)
    spend_allowance(leader, 20, at=0.0)
    spend_allowance(follower, follower_allowance, at=1.0)
    return priors, leader, follower


def test_an_endpoint_whose_first_window_began_later_probes_only_after_one_begun_earlier_refilled():
    priors, leader, follower = two_endpoints_refused_a_second_apart()
    now = 0.03
    while now < 30.0:  # the leader probes every few seconds and is refused: its window is longer than that
        now = refuse_probe(leader, now)
    assert refuse_probe(follower, 1.04) == pytest.approx(1.0305 + vo.PROBE_FIRST_WAIT)  # its own quick first probe
    floor = priors.first_windows["/a"][1]
    assert follower.ready_at(now) == pytest.approx(1.0 + floor + 2 * vo.PROBE_MAX_WAIT)  # not every few seconds
    leader.on_send(60.0)
    leader.on_success(60.0, probe=True)  # the leader's window refilled after 60 s
    assert "/a" not in priors.first_windows and priors.window_seconds == pytest.approx(60.0)
    assert follower.ready_at(60.0) == 60.0  # free to probe at once
    refuse_probe(follower, 60.0)  # refused (its window began a second later): its own probes go on doubling
    assert follower.ready_at(60.0) == pytest.approx(60.0 + 4 * vo.PROBE_FIRST_WAIT)


def test_an_endpoint_refused_right_after_the_allowance_another_had_sends_no_probe_until_that_one_refilled():
    priors, leader, follower = two_endpoints_refused_a_second_apart(follower_allowance=20)
    now = refuse_probe(leader, 0.03)  # the leader's first probe, half a second on, is refused
    floor = priors.first_windows["/a"][1]
    assert follower.allowance_seen_elsewhere
    assert follower.ready_at(1.03) == pytest.approx(1.0 + floor + 2 * vo.PROBE_MAX_WAIT)  # not its own quick probe
    while now < 55.0:  # as long as the leader is refused, so would the follower be: it waits
        now = refuse_probe(leader, now)
        assert follower.ready_at(now) > now
    leader.on_send(60.0)
    leader.on_success(60.0, probe=True)  # the leader's window refilled after 60 s
    assert follower.ready_at(60.0) == 60.0 and follower.probe_sent_at is None  # its first probe, at once


def test_an_endpoint_that_waited_for_another_endpoints_refill_learns_no_window_from_that_wait():
    priors, leader, follower = two_endpoints_refused_a_second_apart(follower_allowance=20)
    now = refuse_probe(leader, 0.03)
    refuse_probe(leader, now)  # refused at 1.5 s, then the leader has nothing more to send: a bucket, maybe
    held_until = follower.ready_at(1.03)
    assert held_until == pytest.approx(1.0 + priors.first_windows["/a"][1] + 2 * vo.PROBE_MAX_WAIT)
    assert follower.on_send(held_until) is True
    follower.on_success(held_until, probe=True)  # refilled, over 10 s after its 429: but it was not asking
    assert not follower.window_known()  # so its next burst is paced, not sent all at once


def test_an_endpoint_with_the_allowance_of_a_learned_window_sends_its_first_probe_shortly_before_that_window():
    priors = vo.LimitPriors()
    learned = vo.EndpointPacer("/a", priors=priors)
    spend_allowance(learned, 7)
    learned.on_send(60.0)
    learned.on_success(60.0, probe=True)  # refilled 60 s after its burst began: a window of 7
    alike = vo.EndpointPacer("/b", priors=priors)
    spend_allowance(alike, 7, at=100.0)
    assert alike.ready_at(100.03) == pytest.approx(100.0 + vo.REFILL_LEAD * 60.0)  # no quick probe first


def test_a_leader_refilled_within_moments_holds_no_other_endpoint_back():
    priors, leader, follower = two_endpoints_refused_a_second_apart()
    now = 0.03
    while now < vo.LEARNED_WINDOW_MIN / 2:  # refused for a few seconds: a bucket refilling slowly, maybe
        now = refuse_probe(leader, now)
    probe = refuse_probe(follower, 1.04)
    assert follower.ready_at(probe) == pytest.approx(probe + 2 * vo.PROBE_FIRST_WAIT)  # its own probes, doubling


def test_past_twice_an_allowance_that_grew_requests_go_one_at_a_time():
    pacer = vo.EndpointPacer("/x")
    pacer.refill_burst, pacer.refill_seconds, pacer.refill_wait = 20, 60.0, 59.0
    pacer.burst_started, pacer.burst_successes, pacer.sent_in_burst = 0.0, 20, 20
    pacer.on_send(1.0)
    pacer.on_success(1.1, probe=False)  # the 21st got through: the allowance grew
    assert pacer.refill_burst is None and pacer.grown_from == 20
    for _ in range(40 - 21):
        assert pacer.ready_at(1.2) == 1.2
        pacer.on_send(1.2)
    assert pacer.ready_at(1.2) == float("inf")  # the 41st waits for every answer: the limit may have doubled
    for _ in range(40 - 21):
        pacer.on_success(1.3, probe=False)
    assert pacer.ready_at(1.3) == 1.3


def learned_window(path: str, priors: vo.LimitPriors, at: float, allowance: int = 20) -> vo.EndpointPacer:
    """An endpoint that learned a 60 s window of `allowance` requests; its next window began at `at` + 60 with
    one request through."""
    pacer = vo.EndpointPacer(path, priors=priors)
    spend_allowance(pacer, allowance, at=at)
    pacer.on_send(at + 60.0)
    pacer.on_success(at + 60.0, probe=True)
    assert pacer.window_known()
    return pacer


def spend_window(pacer: vo.EndpointPacer, requests: int, at: float) -> None:
    for _ in range(requests):
        assert pacer.ready_at(at) == at
        assert pacer.on_send(at) is False
        pacer.on_success(at, probe=False)


def test_an_endpoint_does_not_ask_whether_its_window_grew_just_after_another_with_that_window_was_refused_asking():
    priors = vo.LimitPriors()
    asking, quiet = learned_window("/a", priors, at=0.0), learned_window("/b", priors, at=1.0)
    spend_window(asking, 19, at=60.1)
    asking.on_send(60.2)  # the 21st of its window asks whether the allowance grew: no
    asking.on_throttled(60.3, probe=False, server_wait=None, sent_at=60.2)
    spend_window(quiet, 19, at=61.1)  # its own allowance, and no 21st: it waits for its refill
    assert quiet.ready_at(61.2) == pytest.approx(61.0 + vo.REFILL_LEAD * 60.0)
    assert asking.ready_at(61.2) == pytest.approx(60.0 + vo.REFILL_LEAD * 60.0)


@pytest.mark.parametrize(("found_at", "asks_at_once"), [(70.0, True), (95.0, False)])
def test_an_allowance_found_grown_elsewhere_is_asked_about_at_once_early_in_a_window_else_in_the_next(
        found_at, asks_at_once):
    priors = vo.LimitPriors()
    asking, quiet = learned_window("/a", priors, at=0.0), learned_window("/b", priors, at=1.0)
    spend_window(asking, 19, at=60.1)
    asking.on_send(60.2)
    asking.on_throttled(60.3, probe=False, server_wait=None, sent_at=60.2)
    spend_window(quiet, 19, at=61.1)
    priors.note_growth_asked("/a", 20, found_at, grew=True)  # another endpoint's 21st got through
    ready = quiet.ready_at(found_at)
    assert (ready == found_at) is asks_at_once  # its window began at 61: half of it is gone by 91
    if asks_at_once:
        assert quiet.on_send(found_at) is False  # a request like any other, past the allowance
        quiet.on_success(found_at, probe=False)
        assert quiet.grown_from == 20


def test_a_learned_window_stays_learned_when_its_allowance_ran_out_late_in_it():
    pacer = learned_window("/a", vo.LimitPriors(), at=0.0)
    spend_window(pacer, 19, at=60.1)
    pacer.on_send(119.0)  # the 21st only came late (its endpoint had nothing to send): refused a second early
    pacer.on_throttled(119.0, probe=False, server_wait=None, sent_at=119.0)
    probe = pacer.ready_at(119.0)
    assert pacer.on_send(probe) is True
    pacer.on_success(probe + 1.0, probe=True)  # refilled one second after that 429
    assert pacer.window_known() and pacer.refill_burst == 20  # still a window: its next 20 go at once
    spend_window(pacer, 19, at=probe + 1.1)


def test_an_allowance_that_grew_is_probed_for_at_its_windows_refill_not_half_a_second_after_its_429():
    pacer = learned_window("/a", vo.LimitPriors(), at=0.0)
    spend_window(pacer, 20, at=60.1)  # the 21st got through: the allowance grew
    assert pacer.grown_from == 20
    spend_window(pacer, 19, at=60.2)
    pacer.on_send(60.3)  # the 41st, alone (the allowance may have doubled), is refused
    pacer.on_throttled(60.4, probe=False, server_wait=None, sent_at=60.3)
    assert pacer.ready_at(60.4) == pytest.approx(60.0 + vo.REFILL_LEAD * 60.0)


def burst_then_hinted_429(pacer: vo.EndpointPacer, at: float) -> None:
    """Twenty requests answered within 20 ms of `at`, then a 429 with a hint: the pacer's first pace starts."""
    for index in range(20):
        pacer.on_send(at + index * 0.001)
        pacer.on_success(at + index * 0.001 + 0.0005, probe=False)
    pacer.on_send(at + 0.02)
    pacer.on_throttled(at + 0.021, probe=False, server_wait=0.01, sent_at=at + 0.02)


def test_two_precise_hints_pace_an_endpoint_at_what_got_through_between_the_moments_they_named():
    pacer = vo.EndpointPacer("/x")
    burst_then_hinted_429(pacer, 0.0)  # 20 at once from a full bucket: a burst's rate, far above the limit
    pacer.on_send(0.031)  # at the hinted moment, one token: it gets through
    pacer.on_success(0.032, probe=False)
    pacer.on_send(0.032)
    pacer.on_throttled(0.033, probe=False, server_wait=0.024, sent_at=0.032)  # next one at 0.057
    # one success between the moments the hints named (0.031 and 0.057): the limit lets 1 through per 26 ms
    assert pacer.pace.rate == pytest.approx(1 / 0.026)


def test_a_whole_second_hint_measures_no_pace():
    pacer = vo.EndpointPacer("/x")
    burst_then_hinted_429(pacer, 0.0)
    pacer.on_send(0.031)
    pacer.on_success(0.032, probe=False)
    pacer.on_send(0.032)
    pacer.on_throttled(0.033, probe=False, server_wait=1.0, sent_at=0.032)  # may be rounded up by a second
    assert pacer.pace.rate > 100


def test_an_endpoints_first_pace_starts_no_faster_than_one_another_endpoint_settled_at():
    priors = vo.LimitPriors()
    settled, fresh, late = (vo.EndpointPacer(path, priors=priors) for path in ("/a", "/b", "/c"))
    burst_then_hinted_429(settled, 0.0)
    burst_then_hinted_429(fresh, 1.0)
    assert fresh.pace.rate == pytest.approx(20 / 0.021)  # the other is not settled yet: its own burst's rate
    settled.pace.rate, settled.pace.throttled = 40.0, vo.PACE_SETTLED_AFTER  # cut a few times, down to 40 a second
    burst_then_hinted_429(late, 2.0)
    assert late.pace.rate == 40.0


def test_with_no_window_learned_anywhere_probes_double_as_before():
    other = vo.EndpointPacer("/b", priors=vo.LimitPriors())
    spend_allowance(other, 20)
    probe = other.ready_at(0.03)
    other.on_send(probe)
    other.on_throttled(probe, probe=True, server_wait=None)
    assert other.ready_at(probe) == pytest.approx(probe + 2 * vo.PROBE_FIRST_WAIT)


def test_a_learned_window_is_narrowed_down_until_each_window_costs_one_429_and_refills_within_two_percent():
    window, allowance = 60.0, 7  # as measured on project roles: a window from its first request, no header
    pacer = vo.EndpointPacer("/x")
    started, admitted, now = None, 0, 0.0
    refused_per_window: list[int] = []
    refill_starts: list[float] = []
    for _ in range(2000):  # one request at a time on an explicit clock, answered at once
        now = max(now, pacer.ready_at(now))
        probe = pacer.on_send(now)
        if started is None or now >= started + window:
            started, admitted = now, 0
            refill_starts.append(now)
            refused_per_window.append(0)
        if admitted < allowance:
            admitted += 1
            pacer.on_success(now, probe)
        else:
            refused_per_window[-1] += 1
            pacer.on_throttled(now, probe, server_wait=None, sent_at=now)
        now += 0.01
    assert len(refill_starts) > 20
    later = refused_per_window[6:]
    assert set(later) == {1}  # the request that asks whether the limit grew; no probe is refused
    lateness = [b - a - window for a, b in zip(refill_starts[6:], refill_starts[7:])]
    assert max(lateness) <= vo.WINDOW_PRECISION * window + 0.02


# --- hints too small to follow ----------------------------------------------------------------------

def test_a_hint_below_the_floor_is_obeyed_as_the_floor_doubling_with_each_429_in_a_row():
    request = vo.Request(read=None, params={})
    waits = []
    for throttles in range(1, 9):
        request.throttles = throttles
        waits.append(vo.Scheduler._request_wait(request, 0.001))
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, vo.PROBE_MAX_WAIT, vo.PROBE_MAX_WAIT]
    request.throttles = 1
    assert vo.Scheduler._request_wait(request, 2.5) == 2.5  # a real hint is followed
    assert vo.Scheduler._request_wait(request, 3600) == vo.MAX_SERVER_WAIT
    request.throttles = 5
    assert vo.Scheduler._request_wait(request, None) == vo.HINT_FLOOR  # the endpoint probes


def test_a_429_forever_with_a_one_millisecond_hint_sends_a_handful_of_requests_not_hundreds(
        openai_fake, run_connector, veza):
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=429, headers={"retry-after-ms": "1"},
                                    times=None))
    result = run_connector(*NO_ROLE_READS, "--max-throttle-wait", "1", env={"VEZA_OPENAI_TIME_SCALE": "1"},
                           timeout=30)
    assert result.returncode == 1, result.output
    assert "still HTTP 429" in result.stderr
    calls = openai_fake.calls(r"^/organization/invites$")
    # Obeyed as given, that is ~300 requests in the second; floored and doubling: 0.1 + 0.2 + 0.4 + 0.8 s.
    assert calls <= 10, f"{calls} requests to one throttled endpoint in about a second"


# --- waits that cost no CPU -------------------------------------------------------------------------

def test_max_requests_per_second_waits_without_spending_cpu(openai_fake):
    """The reader's own thread, over a run that --max-requests-per-second stretches to seconds, spends a
    small fraction of that on the CPU (a busy wait spends nearly all of it, even on a loaded machine)."""
    config = vo.Config(org_id=openai_fake.org.org_id, openai_api_key=openai_fake.admin_key,
                       openai_base_url=openai_fake.base_url, max_requests_per_second=20.0, role_assignments="none",
                       time_scale=1.0)
    reader = vo.Scheduler(vo.OpenAIAdminClient(config), config, vo.FAMILY_LIST)
    wall, cpu = time.monotonic(), time.thread_time()
    vo.ReadPlan(config, reader).read()
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert reader.calls >= 20 and wall >= (reader.calls - 1) / 20 * 0.9  # the cap did stretch the run
    assert cpu < 0.25 * wall, f"{cpu:.2f}s of CPU in {wall:.2f}s of waiting"


# --- estimates of the time left --------------------------------------------------------------------------

def reader_for_estimates() -> vo.Scheduler:
    config = vo.Config(org_id="org-x", openai_api_key="sk-admin-x", openai_base_url="http://127.0.0.1:9")
    return vo.Scheduler(vo.OpenAIAdminClient(config), config, vo.FAMILY_LIST)


def test_no_time_left_is_estimated_before_any_rate_is_seen():
    reader = reader_for_estimates()
    reader.started = time.monotonic() - 10
    reader.open_reads["user_roles"] = 5000
    reader.pacers["users"].succeeded = vo.MIN_ESTIMATE_SAMPLE - 1
    assert reader.estimate_seconds_left() is None


def test_thousands_of_open_reads_and_no_429_are_counted_at_the_rate_calls_succeed():
    reader = reader_for_estimates()
    reader.started = time.monotonic() - 10
    reader.open_reads["user_roles"] = 5000
    reader.pacers["users"].succeeded = 100  # 10 calls a second so far
    assert reader.estimate_seconds_left() == pytest.approx(500, rel=0.05)  # not "about 0s left"


def test_the_role_read_estimate_waits_for_the_user_list(openai_fake, run_connector, veza):
    openai_fake.org = generate_organization(users=250, projects=3, members=2, service_accounts=0, keys=0, groups=0,
                                            org_id="org-demo0001")
    openai_fake.latency = 0.01  # three pages of users, one of roles: the decision comes before the users
    result = run_connector("--role-assignments", "all", "--dry-run")
    assert result.returncode == 0, result.output
    [line] = [line for line in result.stderr.splitlines() if "role assignment reads:" in line]
    assert "role assignment reads: 250 users and " in line, line
    assert "about 0s" not in line


def test_a_run_of_429s_never_paces_an_endpoint_slower_than_one_request_a_window():
    """Else the endpoint parks: its next request would wait hours, and --max-throttle-wait is only checked
    when an answer comes, so the run would hang instead of failing."""
    pace = vo.ObservedPace(time_scale=1.0)
    pace.start(0.0, 10.0)
    now = 0.0
    for _ in range(200):
        now = pace.ready_at(now)
        pace.on_send(now)
        pace.on_throttled(now + 0.01, now)
    assert pace.rate >= 1 / vo.MAX_SERVER_WAIT
    assert pace.ready_at(now) - now <= vo.MAX_SERVER_WAIT + 1e-6
