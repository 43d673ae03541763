"""The fake's rate-limit models (pure: `now` is passed, nothing sleeps) and its hostile-server fault kinds."""

from __future__ import annotations

import gzip
import json
import math
import socket
import threading
import time

import pytest
import requests
from fake_limits import (
    AlwaysThrottled,
    Combined,
    EveryKth,
    FirstRequestsRefused,
    FixedWindows,
    Limiter,
    TokenBucket,
)
from fake_openai import DEFAULT_ADMIN_KEY, FakeOpenAI, Fault, demo_organization, gzip_bomb

# --- models ---------------------------------------------------------------------------------------


def test_no_limit_admits_everything():
    model = Limiter()
    assert all(model.admit("users", t) is None for t in range(100))
    assert model.bound({"users": 10**6}) == 0
    assert model.admitted["users"] == 100 and model.total_throttled == 0


def test_token_bucket_starts_full_then_hints_the_exact_wait_in_ms():
    model = TokenBucket(rate=10, burst=3, hint="ms")
    assert [model.admit("users", 0.0) for _ in range(3)] == [None] * 3
    assert model.admit("users", 0.0) == {"retry-after-ms": "100"}
    assert model.admit("users", 0.04) == {"retry-after-ms": "60"}  # 0.4 token refilled
    assert model.admit("users", 0.1) is None  # refused requests took no token
    assert model.admit("projects", 0.1) is None  # another endpoint, its own bucket
    assert model.throttled == {"users": 2} and model.admitted == {"users": 4, "projects": 1}


def test_token_bucket_hint_in_whole_seconds_rounded_up_or_none():
    seconds = TokenBucket(rate=0.4, burst=1, hint="s")
    assert seconds.admit("roles", 0.0) is None
    assert seconds.admit("roles", 0.0) == {"retry-after": "3"}  # 2.5 s -> 3
    assert seconds.admit("roles", 2.4) == {"retry-after": "1"}  # 0.1 s -> 1
    silent = TokenBucket(rate=1, burst=1, hint=None)
    assert silent.admit("roles", 0.0) is None
    assert silent.admit("roles", 0.5) == {}


def test_token_bucket_hint_is_in_the_clients_unscaled_time():
    model = TokenBucket(rate=40, burst=1, hint="ms", time_scale=0.01)
    model.admit("users", 0.0)
    assert model.admit("users", 0.0) == {"retry-after-ms": "2500"}  # 25 ms real / 0.01


def test_token_bucket_per_endpoint_limits_and_bound():
    model = TokenBucket(rate=10, burst=5, per_endpoint={"project roles": (1, 2)})
    assert [model.admit("project roles", 0.0) for _ in range(3)] == [None, None, {"retry-after-ms": "1000"}]
    assert model.bound({"users": 25, "project roles": 12}) == 10.0  # (12 - 2) / 1 > (25 - 5) / 10
    assert model.bound({"users": 3}) == 0.0


def test_an_organization_bucket_is_drawn_on_by_every_family_and_bounds_their_sum():
    model = TokenBucket(rate=10, burst=2, hint="ms", shared=True)
    assert model.admit("users", 0.0) is None and model.admit("projects", 0.0) is None
    assert model.admit("invites", 0.0) == {"retry-after-ms": "100"}  # a family never asked before
    assert model.bound({"users": 12, "projects": 10}) == 2.0  # (22 - 2) / 10


def test_a_bucket_whose_rate_doubles_refills_twice_as_fast_after_the_switch():
    model = TokenBucket(rate=10, burst=1, hint="ms", shared=True, doubles_at=1.0)
    assert model.admit("users", 5.0) is None  # the first request: the doubling is 1 s after it
    assert model.admit("users", 5.0) == {"retry-after-ms": "100"}
    assert model.admit("users", 6.0) is None  # 10 tokens by the switch, capped at the burst of 1
    assert model.admit("users", 6.0) == {"retry-after-ms": "50"}  # after it: 20 a second
    assert model.bound({"users": 31}) == 2.0  # 10 tokens in the first second, 20 in the next


def test_fixed_windows_that_double_allow_twice_as_many_in_later_windows():
    model = FixedWindows((2, 1.0), doubles_at=1.5)
    assert [model.admit("roles", 0.0) is None for _ in range(3)] == [True, True, False]
    assert [model.admit("roles", 1.0) is None for _ in range(3)] == [True, True, False]  # before the switch
    assert [model.admit("roles", 2.0) is None for _ in range(5)] == [True] * 4 + [False]
    assert model.bound({"roles": 9}) == 3.0  # windows at 0 and 1 hold 2 each, at 2 and 3 hold 4 each


def test_combined_models_refuse_when_any_refuses_and_bound_by_the_tightest():
    bucket = TokenBucket(rate=10, burst=3, hint="s", shared=True)
    windows = FixedWindows((100, 1.0), {"project roles": (1, 1.0)})
    model = Combined(bucket, windows)
    assert model.admit("project roles", 0.0) is None
    assert model.admit("project roles", 0.0) == {}  # the window refuses, without a header
    assert model.admit("users", 0.0) is None
    assert model.admit("users", 0.0) == {"retry-after": "1"}  # the bucket (2 tokens taken) refuses
    assert model.throttled == {"project roles": 1, "users": 1}
    assert model.bound({"project roles": 5, "users": 20}) == 4.0  # five windows of one > (25 - 3) / 10


def test_every_kth_counts_globally_by_default():
    model = EveryKth(k=3, retry_after_ms=20)
    answers = [model.admit(family, 0.0) for family in ["users", "roles", "users", "roles", "users", "roles"]]
    assert answers == [None, None, {"retry-after-ms": "20"}, None, None, {"retry-after-ms": "20"}]
    assert model.throttled == {"users": 1, "roles": 1}
    assert model.bound({"users": 1000}) == 0


def test_every_kth_per_endpoint_and_without_header():
    model = EveryKth(k=2, retry_after_ms=None, per_endpoint=True)
    answers = [model.admit(family, 0.0) for family in ["users", "roles", "users", "roles"]]
    assert answers == [None, None, {}, {}]


def test_fixed_windows_slide_from_the_first_request_after_a_refill():
    model = FixedWindows(default=(60, 1.0), per_endpoint={"project roles": (7, 0.5)})
    assert all(model.admit("project roles", 0.2 + i * 0.01) is None for i in range(7))  # window [0.2, 0.7)
    assert model.admit("project roles", 0.3) == {}  # no headers
    assert model.admit("project roles", 0.69) == {}
    assert model.admit("users", 0.3) is None  # other endpoints unaffected
    assert model.admit("project roles", 0.7) is None  # refilled: a new window starts now, [0.7, 1.2)
    assert all(model.admit("project roles", 0.71) is None for _ in range(6))
    assert model.admit("project roles", 1.19) == {}
    assert model.admit("project roles", 5.0) is None  # an idle gap: the next window starts at 5.0
    assert model.throttled == {"project roles": 3}


def test_fixed_windows_clock_aligned():
    model = FixedWindows(default=(2, 1.0), aligned=True)
    assert [model.admit("users", t) for t in (0.9, 0.95, 0.99)] == [None, None, {}]
    assert [model.admit("users", t) for t in (1.0, 1.5, 1.9)] == [None, None, {}]


def test_fixed_windows_bound():
    model = FixedWindows(default=(60, 0.6), per_endpoint={"project roles": (7, 0.6)})
    assert model.bound({"project roles": 7}) == 0.0
    assert model.bound({"project roles": 8}) == pytest.approx(0.6)
    assert model.bound({"project roles": 40, "users": 3}) == pytest.approx(5 * 0.6)  # ceil(40/7) - 1 = 5
    assert model.bound({"users": 121}) == pytest.approx(2 * 0.6)
    aligned = FixedWindows(default=(7, 0.6), aligned=True)
    assert aligned.bound({"project roles": 40}) == pytest.approx(4 * 0.6)


def test_fixed_windows_bound_is_reachable_by_a_client_that_waits_out_each_window():
    model = FixedWindows(default=(7, 0.6))
    tick, reads = 0, 0
    while reads < 40:  # poll every ms
        if model.admit("project roles", tick / 1000) is None:
            reads += 1
        else:
            tick += 1
    assert tick / 1000 == pytest.approx(model.bound({"project roles": 40}), abs=0.006)  # 5 waits, <= 1 ms late each


def test_fixed_windows_bound_from_windows_an_earlier_client_spent():
    """A later client gets what is left of each window at once, then waits for the refill and a window each."""
    model = FixedWindows(default=(60, 0.6))
    assert all(model.admit("user roles", 10.0) is None for _ in range(60))  # spent: refills at 10.6
    assert all(model.admit("users", 10.2) is None for _ in range(20))  # 40 left until 10.8
    assert all(model.admit("roles", 9.0) is None for _ in range(60))  # spent, but refilled at 9.6
    assert model.bound_from({"user roles": 1}, now=10.1) == pytest.approx(0.5)
    assert model.bound_from({"user roles": 121}, now=10.1) == pytest.approx(0.5 + 2 * 0.6)
    assert model.bound_from({"users": 40}, now=10.3) == 0.0
    assert model.bound_from({"users": 41}, now=10.3) == pytest.approx(0.5)
    assert model.bound_from({"roles": 61, "projects": 61}, now=10.1) == pytest.approx(0.6)  # as bound(): fresh
    assert model.bound_from({"user roles": 1, "users": 41}, now=10.1) == pytest.approx(0.7)
    before = model.windows()
    assert model.admit("user roles", 10.7) is None  # a later client's request begins a new window
    assert model.bound_from({"user roles": 61}, now=10.1, windows=before) == pytest.approx(0.5 + 0.6)
    with pytest.raises(NotImplementedError):
        FixedWindows(aligned=True).bound_from({"users": 1}, now=0.0)


def test_first_requests_refused_once_per_family_and_forced():
    """Each listed family's first request answers 429 with no header; nothing after it is limited."""
    model = FirstRequestsRefused({"users", "projects", "invites"})
    assert model.admit("users", 0.0) == {} and model.admit("projects", 0.0) == {}
    assert all(model.admit("users", 0.0) is None for _ in range(100))
    assert model.admit("roles", 0.0) is None and model.admit("projects", 0.0) is None
    assert model.throttled == {"users": 1, "projects": 1} and model.bound({"users": 101}) == 0.0
    assert model.forced({"users": 101, "projects": 1, "invites": 1, "roles": 1}) == 3
    assert model.forced({"users": 101}) == 2  # projects was refused, and not read again yet
    assert Limiter().forced({"users": 10}) == 0 and EveryKth(k=7).forced({"users": 30, "roles": 6}) == 6


def test_always_throttled():
    model = AlwaysThrottled({"project roles"})
    assert all(model.admit("project roles", t) == {} for t in range(50))
    assert model.admit("users", 0) is None
    assert model.bound({"users": 5}) == 0 and math.isinf(model.bound({"project roles": 1}))
    assert model.throttled == {"project roles": 50}


def test_models_are_thread_safe():
    model = EveryKth(k=10)
    threads = [threading.Thread(target=lambda: [model.admit("users", 0.0) for _ in range(1000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.throttled["users"] == 800 and model.admitted["users"] == 7200


# --- the fake, over HTTP --------------------------------------------------------------------------


@pytest.fixture
def fake():
    server = FakeOpenAI(demo_organization()).start()
    yield server
    server.stop()


def get(fake: FakeOpenAI, path: str, **params) -> requests.Response:
    return requests.get(fake.base_url + path, params=params, timeout=10,
                        headers={"Authorization": f"Bearer {DEFAULT_ADMIN_KEY}"})


def test_limiter_answers_429_with_its_headers_and_is_logged(fake):
    fake.limiter = TokenBucket(rate=0.001, burst=1, hint="ms")
    assert get(fake, "/projects/proj_alpha/roles").status_code == 200
    throttled = get(fake, "/projects/proj_beta/roles")  # the same endpoint, another project
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(throttled.headers["retry-after-ms"]) > 990_000
    assert get(fake, "/organization/users").status_code == 200
    assert [status for _, _, status in fake.timeline] == [200, 429, 200]
    assert fake.limiter.throttled == {"project roles": 1}


def test_limiter_comes_before_refusals_and_faults_but_after_auth(fake):
    fake.limiter = AlwaysThrottled({"groups"})
    fake.refused["groups"] = 403
    fake.faults.append(Fault(r"^/organization/groups$", status=500))
    assert get(fake, "/organization/groups").status_code == 429
    assert fake.faults[0].seen == 0
    bad_key = requests.get(fake.base_url + "/organization/groups", headers={"Authorization": "Bearer nope"})
    assert bad_key.status_code == 401
    headers = {name.lower() for name in get(fake, "/organization/groups").headers}
    assert not any(name.startswith(("retry-after", "x-ratelimit")) for name in headers)


def test_drip_sends_a_correct_length_slowly(fake):
    fake.faults.append(Fault(r"^/organization/projects/[^/]+/model_permissions$", kind="drip", delay=0.01))
    started = time.monotonic()
    response = get(fake, "/organization/projects/proj_alpha/model_permissions")
    assert response.status_code == 200
    assert response.json()["mode"] == "allow_list"
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert time.monotonic() - started >= len(response.content) * 0.01 * 0.8


def test_drip_stops_when_the_client_hangs_up(fake):
    fake.faults.append(Fault(r"^/organization/users$", kind="drip", delay=0.01))
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.sendall(f"GET /v1/organization/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEFAULT_ADMIN_KEY}"
                     "\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 5
    while fake.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.in_flight == 0  # a ~5 KB body would take ~50 s to drip


@pytest.mark.parametrize("path, cursor", [("/organization/users", "last_id"), ("/organization/groups", "next"),
                                          ("/organization/admin_api_keys", None)])
def test_endless_pages_never_end(fake, path, cursor):
    fake.faults.append(Fault(f"^{path}$", kind="endless", times=None, body=2))
    seen_ids, seen_cursors, after = set(), set(), "whatever"
    for _ in range(5):
        page = get(fake, path, after=after, limit=2).json()
        assert page["has_more"] is True and len(page["data"]) == 2
        ids = [item["id"] for item in page["data"]]
        assert not seen_ids & set(ids)
        seen_ids |= set(ids)
        after = page[cursor] if cursor else ids[-1]
        assert after not in seen_cursors
        seen_cursors.add(after)
    assert page["data"][0].get("object") == get(fake, path).json()["data"][0].get("object")


def test_gzip_bomb(fake):
    fake.faults.append(Fault(r"^/organization/roles$", kind="gzip_bomb", body=5_000_000))
    response = requests.get(fake.base_url + "/organization/roles", stream=True, timeout=10,
                            headers={"Authorization": f"Bearer {DEFAULT_ADMIN_KEY}"})
    assert response.status_code == 200 and response.headers["Content-Encoding"] == "gzip"
    raw = response.raw.read(decode_content=False)
    assert len(raw) < 50_000
    inflated = gzip.decompress(raw)
    assert len(inflated) == 5_000_000 and inflated.startswith(b'{"object":"list","data":[')
    assert gzip_bomb(5_000_000) is gzip_bomb(5_000_000)  # cached


def test_gzip_bomb_of_50_mb_builds_fast():
    started = time.monotonic()
    assert len(gzip_bomb(50_000_000)) < 200_000
    assert time.monotonic() - started < 5


def test_hook_deletes_a_group_mid_run(fake):
    def delete_finance(server: FakeOpenAI) -> None:
        server.org.groups = [g for g in server.org.groups if g["id"] != "group_fin"]

    fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="hook", body=delete_finance,
                             times=None))
    assert get(fake, "/organization/groups/group_fin/users").status_code == 200
    assert get(fake, "/organization/groups/group_eng/users").status_code == 200  # answered normally, after the hook
    assert get(fake, "/organization/groups/group_fin/users").status_code == 404
    assert get(fake, "/organization/groups/group_fin/roles").status_code == 404
    assert get(fake, "/organization/groups/group_eng/users").status_code == 200  # called once


def test_unknown_users_roles_answer_404(fake):
    assert get(fake, "/organization/users/user-0012/roles").status_code == 200
    assert get(fake, "/organization/users/user-nobody/roles").status_code == 404
    assert get(fake, "/projects/proj_alpha/users/user-0011/roles").status_code == 200
    assert get(fake, "/projects/proj_alpha/users/user-ghost/roles").status_code == 200  # a listed project member
    assert get(fake, "/projects/proj_alpha/users/user-nobody/roles").status_code == 404
    assert get(fake, "/projects/proj_gone/users/user-0011/roles").status_code == 404
    fake.org.users = [u for u in fake.org.users if u["id"] != "user-0012"]
    assert get(fake, "/organization/users/user-0012/roles").status_code == 404


def test_a_status_fault_carries_x_should_retry(fake):
    fake.faults.append(Fault(r"^/organization/invites$", status=500, headers={"x-should-retry": "false"}))
    response = get(fake, "/organization/invites")
    assert response.status_code == 500 and response.headers["x-should-retry"] == "false"
    assert fake.timeline[-1][2] == 500


def test_existing_fault_kinds_still_work(fake):
    fake.faults.append(Fault(r"^/organization/invites$", kind="data_not_list"))
    assert get(fake, "/organization/invites").json()["data"] == {"oops": True}
    assert json.loads(get(fake, "/organization/invites").text)["data"][0]["object"] == "organization.invite"


def test_raw_answers_are_sent_as_given_and_authorizations_are_recorded(fake):
    deep = b'{"enabled":' + b"[" * 2000 + b"]" * 2000 + b"}"  # deeper than json.dumps would write
    fake.faults.append(Fault(r"^/organization/roles$", kind="raw", status=200, body=deep))
    response = requests.get(fake.base_url + "/organization/roles", timeout=10,
                            headers={"Authorization": f"Bearer {DEFAULT_ADMIN_KEY}"})
    assert response.status_code == 200 and response.content == deep
    assert response.headers["Content-Type"] == "application/json"
    requests.get(fake.base_url + "/organization/users", timeout=10, auth=("netrc-login", "password"))
    assert fake.authorizations == [f"Bearer {DEFAULT_ADMIN_KEY}", "Basic bmV0cmMtbG9naW46cGFzc3dvcmQ="]
