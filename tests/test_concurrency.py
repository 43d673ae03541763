"""Concurrent reads: minimal calls, deterministic payloads, shared rate limiting, multipart pushes."""

from __future__ import annotations

import pytest
from fake_openai import Fault


@pytest.mark.slow
def test_payload_is_byte_identical_whatever_the_scheduling(run_connector, openai_fake, tmp_path):
    saved = []
    for workers in ("1", "16", "16"):
        # with 16 workers, answers finish in a different order every run (one worker reads in order anyway)
        openai_fake.jitter = 0.0 if workers == "1" else 0.01
        out = tmp_path / f"payload-{len(saved)}.json"
        result = run_connector("--dry-run", "--save_json", str(out), "--max-workers", workers)
        assert result.returncode == 0, result.output
        saved.append(out.read_bytes())
    assert saved[0] == saved[1] == saved[2]


def test_workers_read_concurrently_up_to_the_limit(run_connector, openai_fake):
    openai_fake.latency = 0.02
    assert run_connector("--dry-run", "--max-workers", "4", "--role-assignments", "none").returncode == 0
    assert openai_fake.peak_in_flight == 4


def test_every_list_is_read_once_and_calls_equal_the_minimum(run_connector, openai_fake):
    result = run_connector("--dry-run", "--role-assignments", "none")
    assert result.returncode == 0
    paths = [path for path, query in openai_fake.requests]
    # users: 2 pages; every other list fits one page; per project: 6 reads; per group: 2; project group roles: 1
    expected = 2 + 1 + 1 + 1 + 1 + 1 + 1 + 2 * 6 + 2 * 2 + 1
    # access review (issue #12): audit log, workload identity providers and certificates, one page each; federation
    # rules per provider (2); project certificates and hosted tool permissions per project (2 x 2)
    expected += 1 + 1 + 1 + 2 * 1 + 2 * 2
    assert len(paths) == expected
    pages = [(path, query.get("after")) for path, query in openai_fake.requests]
    assert len(set(pages)) == len(pages), "a page was read twice"
    assert f"calls={expected} retries=0" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_a_429_pauses_only_its_own_endpoint_for_the_servers_wait(run_connector, openai_fake):
    openai_fake.latency = 0.01
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=429, headers={"retry-after-ms": "400"}))
    result = run_connector("--dry-run", "--max-workers", "8", env={"VEZA_OPENAI_TIME_SCALE": "1"})
    assert result.returncode == 0, result.output
    [throttled_at] = [at for at, path, status in openai_fake.timeline if status == 429]
    invites = [at for at, path, status in openai_fake.timeline if path == "/organization/invites"]
    assert len(invites) == 2 and invites[1] >= throttled_at + 0.4  # the throttled endpoint waited as told
    # Every other endpoint went on meanwhile: a pause shared with invites would let through only the few
    # requests already in flight, all within a latency or two of the 429. The 120 role reads still to come
    # take longer than the pause, so a loaded machine only puts more of them inside it.
    others = [at for at, path, status in openai_fake.timeline if path != "/organization/invites"]
    assert len([at for at in others if throttled_at + 0.05 < at < throttled_at + 0.35]) >= 10


def test_max_requests_per_second_caps_the_rate(run_connector, openai_fake):
    result = run_connector("--dry-run", "--max-workers", "8", "--role-assignments", "none",
                           "--max-requests-per-second", "40", env={"VEZA_OPENAI_TIME_SCALE": "1"})
    assert result.returncode == 0
    arrivals = sorted(at for at, _, _ in openai_fake.timeline)
    assert len(arrivals) > 20
    # Arrivals are measured at the server, where a busy machine delays some by up to a few hundred ms: the
    # margins below allow that; without the cap the requests arrive hundreds a second.
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= 40 * 1.25
    for index in range(len(arrivals) - 20):  # any 20 consecutive requests span at least half of 19 intervals
        assert arrivals[index + 20] - arrivals[index] >= 19 * 0.025 * 0.5
