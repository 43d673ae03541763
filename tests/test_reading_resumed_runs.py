"""Resumable, age-aware runs (--state-dir): a cut run exits 3 and the next goes on from its saved lists; what is
saved is private, locked, checked before it is trusted, and never stands in for a list too old to vouch for."""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import NO_ROLE_READS, SCRIPT, application, assignments, clean_environment, load, summary_line
from fake_openai import Fault
from state_dir import (
    BETA_USERS,
    CUT,
    IN_USERS_LIST,
    MEMBERS_AND_KEYS,
    OTHER_PROJECT_LISTS,
    PROJECT_LISTS,
    RFC3339,
    USERS_LIST,
    age_lists,
    list_file_holding,
    list_files,
    project,
    read_counts,
    throttle,
    unix,
    without_read_times,
)

import veza_openai

IN_USE = "another run is using the state directory"
# exit 3 says how many lists are missing or too old, at INFO or WARNING
LISTS_LEFT = re.compile(r" (INFO|WARNING) .*\b\d+ lists?\b")


def assert_incomplete(result, veza, pushes_before: int) -> None:
    assert result.returncode == 3, result.output
    assert "outcome=incomplete" in summary_line(result.stderr), summary_line(result.stderr)
    assert LISTS_LEFT.search(result.stderr), result.stderr
    assert len(veza.payloads) == pushes_before


@pytest.mark.slow
def test_runs_cut_by_max_run_time_go_on_until_one_pushes_what_an_uninterrupted_run_pushes(
        run_connector, openai_fake, veza, fault_free_payload, tmp_path):
    """Each cut run exits 3, pushes nothing and has saved more lists than the last; the run that has every list
    pushes the union of fresh and kept lists, identical (but for read times) to one uninterrupted run. What each
    run can read comes from the families answered 429: no per-project list, then no project's members and keys,
    then (the last run) only the projects' members and keys, the rest kept from the second run."""
    state = tmp_path / "state"
    args = (*NO_ROLE_READS, "--state-dir", str(state), *CUT)
    saved, started = [], []
    for throttled in (PROJECT_LISTS, MEMBERS_AND_KEYS):
        throttle(openai_fake, throttled)
        started.append(time.time())
        result = run_connector(*args)
        assert_incomplete(result, veza, 0)
        saved.append(len(list_files(state)))
    assert 0 < saved[0] < saved[1], saved
    throttle(openai_fake, OTHER_PROJECT_LISTS)  # read by the second run only: they can only come from the state
    started.append(time.time())
    result = run_connector(*args)
    assert result.returncode == 0, result.output
    assert "outcome=pushed" in summary_line(result.stderr)
    [payload] = veza.payloads
    assert without_read_times(payload) == without_read_times(fault_free_payload(*NO_ROLE_READS))
    assert int(read_counts(result.stderr)["kept"]) >= 1
    # each project's oldest list was read by the second run; the application's oldest is no younger
    oldest = unix(application(payload)["custom_properties"]["oldest_read_at"])
    for project_id in ("proj_alpha", "proj_beta"):
        read_at = unix(project(payload, project_id)["custom_properties"]["lists_read_at"])
        assert started[1] - 1 < read_at < started[2], (started, read_at)
        assert oldest <= read_at


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["stopped by SIGTERM", "killed by SIGKILL"])
def test_a_run_stopped_or_killed_mid_read_leaves_its_finished_lists_and_no_lock_to_the_next_run(
        tmp_path, ca, openai_fake, veza, run_connector, fault_free_payload, signum, status):
    """A run stopped (SIGTERM, exit 143) or killed while proj_beta's members are being read keeps the lists it
    had finished; the next run is not blocked by a lock and, unable to read the organization's user list, pushes
    it from the state: the payload of one uninterrupted run."""
    state = tmp_path / "state"
    openai_fake.faults.append(Fault(BETA_USERS, kind="delay-only", delay=10, times=None))
    process = subprocess.Popen([sys.executable, str(SCRIPT), *NO_ROLE_READS, "--state-dir", str(state)],
                               env=clean_environment(tmp_path, ca, openai_fake, veza, None, ()), cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while openai_fake.calls(BETA_USERS) == 0 or list_file_holding(state, IN_USERS_LIST) is None:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run never saved the user list while reading"
            time.sleep(0.02)
        process.send_signal(signum)  # proj_beta's members are still being read
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, stderr
    assert veza.payloads == []
    assert list_file_holding(state, IN_USERS_LIST) is not None
    throttle(openai_fake, USERS_LIST)  # and proj_beta's members answer at once again
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), *CUT)
    assert IN_USE not in result.stderr
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    assert without_read_times(payload) == without_read_times(fault_free_payload(*NO_ROLE_READS))
    assert int(read_counts(result.stderr)["kept"]) >= 1


@pytest.mark.slow
def test_a_deleted_projects_saved_lists_and_a_removed_user_never_come_back_from_the_state(
        run_connector, openai_fake, veza, tmp_path):
    """proj_beta is deleted and user-0013 removed after a run; the next run, unable to read any project's lists,
    pushes proj_alpha's from the state but drops proj_beta's with it: its member user-0012 keeps no role on it."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    assert "proj_beta" in assignments(veza.payloads[0], "user-0012")["project_viewer"]["resources"]
    org = openai_fake.org
    org.projects[:] = [p for p in org.projects if p["id"] != "proj_beta"]
    org.users[:] = [u for u in org.users if u["id"] != "user-0013"]
    throttle(openai_fake, PROJECT_LISTS)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), *CUT)
    assert result.returncode == 0, result.output
    payload = veza.payloads[1]
    assert "proj_beta" not in json.dumps(payload) and "user-0013" not in json.dumps(payload)
    assert "project_owner" in assignments(payload, "user-0010")  # proj_alpha's members, from the state
    assert int(read_counts(result.stderr)["kept"]) >= 1
    keys = [json.dumps(load(path)["key"]) for path in list_files(state)]  # nothing deleted survives in the state
    assert keys and not [key for key in keys if "proj_beta" in key or "user-0013" in key], keys


def test_lists_never_read_go_first_then_those_the_audit_log_says_changed_then_the_oldest(tmp_path):
    """The order a run reads an endpoint's lists in, from what the state held at its start and the audit log names."""
    state = veza_openai.State(str(tmp_path), "org-small0001")
    try:
        for key, read_at in (("p1", 300.0), ("p2", 100.0), ("p3", 200.0)):
            state.save("project_users", key, read_at, [])
        state.save("project_roles", "p4", 50.0, [])
    finally:
        state.close()
    state = veza_openai.State(str(tmp_path), "org-small0001")
    try:
        changed = {"project_roles": 60.0}  # an event after p4's list was read
        order = sorted(["p1", "p2", "p3", "new"], key=lambda key: state.rank("project_users", key, changed))
        assert order == ["new", "p2", "p3", "p1"]
        assert state.rank("project_roles", "p4", changed) < state.rank("project_users", "p2", changed)
        state.save("project_users", "p1", 300.0, [{"id": "u1"}])
        state.save("project_user_roles", ("p2", "u2"), 50.0, [])
        state.save("project_users", "p2", 100.0, [{"id": "u2"}])
    finally:
        state.close()
    state = veza_openai.State(str(tmp_path), "org-small0001")  # a list goes as early as the oldest read for it
    try:
        order = sorted(["p1", "p2", "p3"], key=lambda key: state.rank("project_users", key, {}))
        assert order == ["p1", "p2", "p3"]  # p1's member u1 never read; p2's member read at 50
    finally:
        state.close()


def not_json(path):
    path.write_text("{not JSON")


def truncated(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def edited(**fields):
    def edit(path):
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return edit


UNUSABLE = {"not JSON": not_json, "truncated": truncated,
            "of another organization": edited(organization="org-other0001"), "of a future format": edited(format=2),
            "of an older connector": edited(connector="0.9.0")}
# Refused by the same gate (State.load), shown without a connector run.
DAMAGED = {"of another shape": edited(result={"data": []}), "read in the future": edited(read_at=time.time() + 3600),
           "read at NaN": edited(read_at=float("nan")), "of an unhashable key": edited(key=[["user-0119"]]),
           "of no family": edited(family=["users"])}


def corrupt_two_lists(state, corrupt) -> None:
    """The organization's user list and one other saved list: two bad files, one warning."""
    users = list_file_holding(state, IN_USERS_LIST)
    other = next(path for path in list_files(state) if path != users)
    for path in (users, other):
        corrupt(path)


def one_state_warning(stderr: str) -> None:
    warnings = [line for line in stderr.splitlines() if " WARNING " in line and "state directory" in line]
    assert len(warnings) == 1, stderr
    assert "ignored" in warnings[0], warnings[0]


@pytest.mark.parametrize("corrupt", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_state_file_is_ignored_with_one_warning_and_a_full_read_is_pushed(
        run_connector, veza, fault_free_payload, tmp_path, corrupt):
    """A saved list that cannot be read, or is another organization's, format's or connector's, is never trusted
    nor a crash: one warning for the directory, and the run reads everything and pushes it."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    corrupt_two_lists(state, corrupt)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert result.returncode == 0, result.output
    one_state_warning(result.stderr)
    assert "Traceback" not in result.output
    assert without_read_times(veza.payloads[1]) == without_read_times(fault_free_payload(*NO_ROLE_READS))


@pytest.mark.parametrize("corrupt", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_list_file_read_in_the_future_or_of_another_shape_is_never_trusted(tmp_path, caplog, corrupt):
    """A read time ahead of the clock (or not a number) would never grow old; a result of the wrong shape would
    stand in as an empty list; an unhashable key would crash the index. Each: not indexed, not kept, one warning."""
    state = veza_openai.State(str(tmp_path), "org-small0001")
    state.save("users", None, time.time() - 10, [{"id": "user-0119"}])
    state.close()
    corrupt(list_files(tmp_path)[0])
    state = veza_openai.State(str(tmp_path), "org-small0001")
    try:
        assert state.index == {} and not state.kept("users", None)
    finally:
        state.close()
    assert [r.message for r in caplog.records if "files ignored" in r.getMessage()], caplog.text


def test_an_unreadable_record_of_the_last_push_is_ignored_with_one_warning_and_the_push_stands(
        run_connector, veza, fault_free_payload, tmp_path):
    """A truncated pushed.json costs the change report its comparison, never the push."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    truncated(state / "pushed.json")
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert result.returncode == 0, result.output
    one_state_warning(result.stderr)
    assert without_read_times(veza.payloads[1]) == without_read_times(fault_free_payload(*NO_ROLE_READS))


# The same gate (State.load) refuses every other unusable file: these three show a refused file never stands in.
FOREIGN = {key: UNUSABLE[key] for key in ("of another organization", "of a future format", "of an older connector")}


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_saved_list_never_stands_in_for_a_list_left_unread(run_connector, openai_fake, veza, tmp_path,
                                                                     corrupt):
    """A well-formed list of another organization, format or connector is not used: when the run cannot read
    that list itself it exits 3 instead of pushing it."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    corrupt_two_lists(state, corrupt)
    throttle(openai_fake, USERS_LIST)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), *CUT)
    assert_incomplete(result, veza, 1)
    one_state_warning(result.stderr)


def test_a_second_run_on_a_state_directory_in_use_exits_at_once_and_sends_no_request(
        run_connector, small_openai, veza, tmp_path):
    """While another run holds DIR/lock, a run exits 1 with an ERROR naming the directory, before any request;
    the lock file left behind blocks nothing once released."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    lock = state / "lock"
    with open(lock, "a") as held:
        lock.chmod(0o600)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), timeout=20)
    assert result.returncode == 1, result.output
    [error] = [line for line in result.stderr.splitlines() if IN_USE in line]
    assert " ERROR " in error and str(state) in error, error
    assert "outcome=failed" in summary_line(result.stderr)
    assert small_openai.calls() == 0 and veza.requests == []
    after = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert after.returncode == 0, after.output


def test_the_state_directory_is_created_0700_and_every_file_in_it_is_0600(run_connector, small_openai, tmp_path):
    """The state holds every user's email: private whatever the umask (here 0)."""
    state = tmp_path / "state"
    umask = os.umask(0)
    try:
        result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.output
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert list_files(state) and (state / "pushed.json").is_file()
    modes = {str(path.relative_to(state)): oct(stat.S_IMODE(path.stat().st_mode))
             for path in state.rglob("*") if path.is_file()}
    assert {name: mode for name, mode in modes.items() if mode != oct(0o600)} == {}, modes


def test_a_saved_list_records_its_format_organization_connector_family_and_read_time(run_connector, small_openai,
                                                                                     tmp_path):
    """DIR/lists/<family>/<hash>.json holds what a later run checks before trusting it, and when it was read."""
    started = time.time()
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 0, result.output
    assert list_files(tmp_path / "state")
    for path in list_files(tmp_path / "state"):
        record = load(path)
        assert {"format", "organization", "connector", "family", "key", "read_at", "result"} <= set(record), path
        assert record["format"] == 1 and record["organization"] == "org-small0001"
        assert record["connector"] == veza_openai.__version__
        assert started - 1 <= record["read_at"] <= time.time() + 1


@pytest.mark.parametrize("with_state", [True, False], ids=["with a state directory", "without"])
def test_the_summary_ends_with_the_oldest_read_and_the_lists_read_and_kept(run_connector, small_openai, veza,
                                                                           tmp_path, with_state):
    """version=, then oldest_read= lists_read= lists_kept=, last; the read-time properties are pushed only with a
    state directory (TIMESTAMPs: the application's oldest list, each project's oldest list)."""
    state = tmp_path / "state"
    started = time.time()
    result = run_connector(*NO_ROLE_READS, *(("--state-dir", str(state)) if with_state else ()))
    assert result.returncode == 0, result.output
    counts = read_counts(result.stderr)
    assert counts["version"] == veza_openai.__version__ and counts["kept"] == "0"
    [payload] = veza.payloads
    if not with_state:
        assert "oldest_read_at" not in json.dumps(payload) and "lists_read_at" not in json.dumps(payload)
        return
    assert int(counts["read"]) >= 1 and RFC3339.match(counts["oldest"]), counts
    definitions = payload["custom_property_definition"]["applications"][0]
    assert definitions["application_properties"]["oldest_read_at"] == "TIMESTAMP"
    [projects] = [r for r in definitions["resources"] if r["resource_type"] == "project"]
    assert projects["properties"]["lists_read_at"] == "TIMESTAMP"
    oldest = unix(application(payload)["custom_properties"]["oldest_read_at"])
    assert started - 1 <= oldest <= time.time() + 1
    for resource in application(payload)["resources"]:
        if resource["resource_type"] == "project":
            assert oldest <= unix(resource["custom_properties"]["lists_read_at"]) <= time.time() + 1


@pytest.mark.slow
def test_a_kept_list_older_than_max_age_is_not_pushed_when_no_audit_log_vouches_for_it(run_connector, openai_fake,
                                                                                        veza, tmp_path):
    """With --activity-days 0 a kept list is as old as it is: an hour-old user list the run cannot read again,
    with --max-age 60, makes the run exit 3 instead of pushing it."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--activity-days", "0", "--state-dir", str(state))
    assert first.returncode == 0, first.output
    age_lists(state, 3600)
    throttle(openai_fake, USERS_LIST)
    result = run_connector(*NO_ROLE_READS, "--activity-days", "0", "--state-dir", str(state), "--max-age", "60", *CUT)
    assert_incomplete(result, veza, 1)


@pytest.mark.slow
def test_a_kept_list_older_than_max_age_is_pushed_while_the_audit_log_names_no_change_to_it(
        run_connector, openai_fake, veza, fault_free_payload, tmp_path):
    """The audit log, read back past the list's read time, names no change to the user list: the hour-old list
    counts as fresh under --max-age 60 and is pushed, its real read time shown, and the log counts it."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    age_lists(state, 3600)
    throttle(openai_fake, USERS_LIST)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--max-age", "60", *CUT)
    assert result.returncode == 0, result.output
    assert re.search(r"INFO [1-9]\d* kept lists older than --max-age 60s pushed: the audit log names no change",
                     result.stderr), result.stderr
    payload = veza.payloads[1]
    assert without_read_times(payload) == without_read_times(fault_free_payload(*NO_ROLE_READS))
    an_hour_ago = time.time() - 3600
    assert unix(application(payload)["custom_properties"]["oldest_read_at"]) <= an_hour_ago + 60
    for project_id in ("proj_alpha", "proj_beta"):  # their lists were all read again
        assert unix(project(payload, project_id)["custom_properties"]["lists_read_at"]) > an_hour_ago + 60


def test_an_audit_event_in_the_second_a_list_was_read_may_be_after_it(tmp_path):
    """The audit log gives whole seconds: an event stamped with the second a kept list was read in (floored) may
    be after the read, so it does not vouch for the hour-old list under --max-age 60; one a second earlier does."""
    state = veza_openai.State(str(tmp_path), "org-small0001")
    try:
        plan = veza_openai.ReadPlan(veza_openai.Config(max_age=60, org_id="org-small0001"), None, state)
        read_at = int(time.time()) - 3600 + 0.5
        plan.kept, plan.audit_from = {("users", None): read_at}, read_at - 86_400
        plan.changed = {"users": int(read_at)}
        with pytest.raises(veza_openai.Incomplete):
            plan.check_complete()
        plan.changed = {"users": int(read_at) - 1}
        plan.check_complete()  # vouched for: no exception, the push may go
    finally:
        state.close()


def test_files_the_state_does_not_trust_are_deleted_once_a_whole_snapshot_is_pushed(run_connector, small_openai,
                                                                                     tmp_path):
    """An older connector's list of an entity gone since (emails in it) is neither trusted nor kept for ever."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    planted = state / "lists" / "users" / "0123456789abcdef0123456789abcdef.json"
    planted.write_text(json.dumps({**load(list_files(state)[0]), "connector": "0.9.0", "key": "gone@example.com"}))
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert result.returncode == 0, result.output
    assert not planted.exists() and list_files(state)


def test_the_push_reserve_never_takes_more_than_half_the_run(run_connector, small_openai, tmp_path):
    """A remembered push time longer than the run (a push that hung, an edited push.json) still leaves half of
    --max-run-time to read: every run reads, and the state fills."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "push.json").write_text(json.dumps({"format": 1, "organization": small_openai.org.org_id,
                                                 "connector": veza_openai.__version__, "push_seconds": 1e9}))
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), *CUT)
    assert int(read_counts(result.stderr)["read"]) > 0, result.output


def test_an_endpoints_waiting_reads_go_on_first_then_by_rank_whatever_their_parent():
    """A never-read list queued after older ones still goes first: a cut run then always reaches new lists."""
    family = veza_openai.FAMILIES["project_user_roles"]
    scheduler = veza_openai.Scheduler(None, veza_openai.Config(), veza_openai.Clock(), [family])

    def queued(*keys):
        return [heapq.heappop(scheduler.queues[family.name])[1].key for _ in keys]

    for key, rank in (("kept, read at 100", (2, 100.0)), ("kept, read at 300", (2, 300.0)), ("never read", (0, 0))):
        scheduler.add(veza_openai.ListRead(family, key, "/p", None, {}, rank=rank))
    scheduler.wait(veza_openai.ListRead(family, "its next page", "/p", None, {}), going_on=True)
    assert queued(1, 2, 3, 4) == ["its next page", "never read", "kept, read at 100", "kept, read at 300"]
    for key in ("a", "b", "c"):  # without a state: in turn
        scheduler.add(veza_openai.ListRead(family, key, "/p", None, {}))
    assert queued(1, 2, 3) == ["a", "b", "c"]


def test_the_push_time_a_run_reserves_is_remembered_and_never_shrinks_after_a_push_that_did_not_finish(tmp_path):
    """The time from mapping to the push's end, kept in push.json; a push cut short counts as at least as long as
    the longest before it, so a run cut in its push reserves more the next time, never less."""
    def run_with_push(seconds, pushed):
        state = veza_openai.State(str(tmp_path), "org-small0001")
        remembered = state.push_seconds
        state.push_started = time.monotonic() - seconds
        state.close(pushed)
        return remembered

    assert run_with_push(5, pushed=False) == 0  # no push yet: the reserve is 60 s, scaled
    assert run_with_push(1, pushed=False) >= 5
    assert run_with_push(1, pushed=True) >= 5
    assert 1 <= run_with_push(0, pushed=False) < 5  # a finished push's own time, shorter or not
    assert oct(os.stat(tmp_path / "push.json").st_mode & 0o777) == "0o600"
