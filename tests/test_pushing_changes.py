"""What changed since the last push: `changes: ` lines before the human summary and --changes-json, against
DIR/pushed.json (the last push Veza confirmed) or a payload saved by an earlier run (--previous)."""

from __future__ import annotations

import json
import os
import re
import stat
import time

from conftest import NO_ROLE_READS, assignments, creds_of, load, summary_line, users_of
from fake_openai import BASE_TIME
from state_dir import CUT, list_files, project, read_counts, throttle, unix

import veza_openai

LISTS = ("users_joined", "users_left", "owners_added", "owners_removed", "admin_keys_created", "admin_keys_removed",
         "project_keys_created", "project_keys_removed", "keys_activated", "keys_deactivated", "roles_granted",
         "roles_revoked")
KEYS = {"since", "from_version", "to_version", *LISTS}
INVITES = r"^/organization/invites$"  # a family of one list, unread by the cut run: kept


def changes_logged(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r" INFO changes: ", line)]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def normalized(report: dict) -> dict:
    """Each list in a stable order (grants as tuples), for comparing two reports."""
    return {key: sorted(json.dumps(item) for item in report[key]) for key in LISTS}


def user(uid: str) -> dict:
    number = int(uid.split("-")[1])
    return {"object": "organization.user", "id": uid, "name": f"Demo User {number}",
            "email": f"demo{number}@example.com", "role": "reader", "added_at": BASE_TIME + number}


def project_key(kid: str, owner: dict) -> dict:
    return {"object": "organization.project.api_key", "id": kid, "name": "new key",
            "redacted_value": f"sk-...{kid[-4:]}", "created_at": BASE_TIME + 1000, "last_used_at": None,
            "expires_at": None, "owner_project_access": "active",
            "owner": {"type": "user", "user": {"id": owner["id"], "email": owner["email"], "name": owner["name"],
                                               "role": owner["role"], "created_at": BASE_TIME}}}


def find(items: list[dict], item_id: str) -> dict:
    [found] = [item for item in items if item.get("id") == item_id]
    return found


def delete_project(org, pid: str) -> None:
    org.projects[:] = [p for p in org.projects if p["id"] != pid]
    for per_project in (org.project_users, org.service_accounts, org.api_keys, org.project_roles, org.project_groups,
                        org.project_certificates, org.hosted_tool_permissions, org.model_permissions):
        per_project.pop(pid, None)
    for per_pair in (org.project_group_roles, org.project_user_roles):
        for key in [key for key in per_pair if key[0] == pid]:
            del per_pair[key]


def test_changes_between_two_runs_are_in_the_next_push_of_a_resumed_run_and_in_its_change_report(
        run_connector, openai_fake, veza, tmp_path):
    """Between two runs: seven users join, one leaves, the only owner is demoted, a project key is created,
    proj_alpha is archived and proj_beta deleted. The next run, cut with the invite list unread (kept from the
    state), pushes all of it, logs it (five ids at most, then ...) and writes it to --changes-json; nothing
    deleted comes back from the state."""
    state, report = tmp_path / "state", tmp_path / "changes.json"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    before = veza.payloads[0]
    assert "proj_beta" in json.dumps(before) and "user-0013" in users_of(before)
    org = openai_fake.org
    joined = [f"user-{n:04d}" for n in range(200, 207)]
    org.users[:] = [u for u in org.users if u["id"] != "user-0013"] + [user(uid) for uid in joined]
    find(org.users, "user-0000")["role"] = "reader"
    org.api_keys["proj_alpha"].append(project_key("key_new1", find(org.project_users["proj_alpha"], "user-0010")))
    find(org.projects, "proj_alpha").update(status="archived", archived_at=BASE_TIME + 500)
    delete_project(org, "proj_beta")
    throttle(openai_fake, INVITES)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(report), *CUT)
    assert result.returncode == 0, result.output
    assert "outcome=pushed" in summary_line(result.stderr) and int(read_counts(result.stderr)["kept"]) >= 1
    after = veza.payloads[1]
    users = users_of(after)
    assert set(joined) <= set(users) and "user-0013" not in json.dumps(after)
    assert "proj_beta" not in json.dumps(after)  # nor user-0012's viewer role on it
    assert users["invite-pending"] == users_of(before)["invite-pending"]  # from the kept invite list
    assert "reader" in assignments(after, "user-0000") and "owner" not in assignments(after, "user-0000")
    assert "key_new1" in creds_of(after)
    assert project(after, "proj_alpha")["custom_properties"]["status"] == "archived"

    logged = "\n".join(changes_logged(result.stderr))
    assert re.search(r"changes: 7 users joined \(user-0200, user-0201, user-0202, user-0203, user-0204,? ?\.\.\.\)",
                     logged), logged
    assert re.search(r"changes: 1 users? left \(user-0013\)", logged), logged
    assert re.search(r"changes: 1 owners? removed \(user-0000\)", logged), logged
    assert re.search(r"changes: 1 project keys? created \(key_new1\)", logged), logged
    assert re.search(r"changes: \d+ roles? revoked", logged) and re.search(r"changes: \d+ roles? granted", logged)
    assert "none since the last push" not in logged and "upgrade" not in logged

    changes = load(report)
    assert set(changes) == KEYS
    assert changes["from_version"] == changes["to_version"] == veza_openai.__version__
    assert sorted(changes["users_joined"]) == joined and changes["users_left"] == ["user-0013"]
    assert changes["owners_removed"] == ["user-0000"] and changes["owners_added"] == []
    assert changes["project_keys_created"] == ["key_new1"] and changes["project_keys_removed"] == []
    assert changes["admin_keys_created"] == [] and changes["admin_keys_removed"] == []
    assert ["user-0000", "owner", "application"] in changes["roles_revoked"]
    assert not [grant for grant in changes["roles_revoked"] if "via_organization" in grant[1]]  # said as the owner
    assert ["user-0012", "project_viewer", "proj_beta"] in changes["roles_revoked"]
    assert ["user-0000", "reader", "application"] in changes["roles_granted"]
    assert unix(changes["since"]) <= time.time()


def test_an_unchanged_organization_logs_one_line_of_no_change(run_connector, small_openai, tmp_path):
    """Nothing changed: one `changes: none since the last push` line; the report's lists are empty and `since`
    is the time of the push it compares with."""
    state, report = tmp_path / "state", tmp_path / "changes.json"
    started = time.time()
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(report))
    assert result.returncode == 0, result.output
    assert [line.split(" INFO ", 1)[1] for line in changes_logged(result.stderr)] == [
        "changes: none since the last push"]
    changes = load(report)
    assert all(changes[key] == [] for key in LISTS), changes
    assert started - 1 <= unix(changes["since"]) <= time.time()
    assert changes["from_version"] == changes["to_version"] == veza_openai.__version__


def test_a_report_that_fails_after_the_push_still_records_it_so_the_next_reports_only_later_changes(
        run_connector, small_openai, tmp_path):
    """--changes-json cannot be written (here: it names a directory): a warning, the push stands, and
    DIR/pushed.json is this push, so the next run compares with it (one failure never makes the next report span
    two pushes)."""
    state, directory = tmp_path / "state", tmp_path / "a-directory"
    directory.mkdir()
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    promoted = small_openai.org.users[1]
    promoted["role"] = "owner"
    failing = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(directory))
    assert failing.returncode == 0 and "outcome=pushed" in summary_line(failing.stderr), failing.output
    assert "changes since the last push not reported" in failing.stderr
    assert any(f"1 owners added ({promoted['id']})" in line for line in changes_logged(failing.stderr)), failing.stderr
    after = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert after.returncode == 0, after.output
    assert [line.split(" INFO ", 1)[1] for line in changes_logged(after.stderr)] == [
        "changes: none since the last push"]


def test_a_federation_rule_is_never_reported_as_a_project_key(run_connector, openai_fake, tmp_path):
    """A federation rule's provider without an issuer still makes a federation rule, not a project key: disabling
    the provider deactivates no key in the report."""
    state, report = tmp_path / "state", tmp_path / "changes.json"
    for provider in openai_fake.org.workload_identity_providers:
        provider.pop("issuer", None)
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    for provider in openai_fake.org.workload_identity_providers:
        provider["enabled"] = False
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(report))
    assert result.returncode == 0, result.output
    rules = {rule["id"] for rules in openai_fake.org.federation_rules.values() for rule in rules}
    assert rules and not rules & {*load(report)["keys_deactivated"], *load(report)["project_keys_created"]}


def test_a_signal_during_the_change_report_keeps_the_push_and_names_no_veza_report(run_connector, small_openai,
                                                                                   tmp_path, monkeypatch):
    """SIGTERM while comparing (raised as the run's handler raises it; the in-process run sets no handler): exit 143,
    outcome=pushed, no report= (no --create-report), the ERROR says the push had completed, and DIR/pushed.json
    already holds this push."""
    state = tmp_path / "state"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    pushed_at = load(state / "pushed.json")["pushed_at"]

    def stopped_while_comparing(before, after):
        raise veza_openai.Stopped("SIGTERM", veza_openai.ExitStatus.TERMINATED)

    monkeypatch.setattr(veza_openai, "compare_facts", stopped_while_comparing)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert result.returncode == 143, result.output
    assert "stopped by SIGTERM after the push had completed" in result.stderr
    summary = summary_line(result.stderr)
    assert "outcome=pushed" in summary and "report=" not in summary, summary
    assert load(state / "pushed.json")["pushed_at"] > pushed_at


def test_a_dry_run_saves_lists_but_the_first_push_after_it_has_nothing_to_compare_with(
        run_connector, small_openai, veza, tmp_path):
    """A dry run is never a push: it writes no pushed.json, so the next push's report says since null with every
    list empty; --changes-json is 0600 (umask 0) and holds exactly the documented keys; a later dry run leaves
    pushed.json as the push wrote it."""
    state, report = tmp_path / "state", tmp_path / "changes.json"
    dry = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--dry-run")
    assert dry.returncode == 0, dry.output
    assert "outcome=dry-run" in summary_line(dry.stderr)
    assert list_files(state) and not (state / "pushed.json").exists()
    umask = os.umask(0)
    try:
        first = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(report))
    finally:
        os.umask(umask)
    assert first.returncode == 0, first.output
    assert mode(report) == 0o600
    changes = load(report)
    assert set(changes) == KEYS
    assert changes["since"] is None and all(changes[key] == [] for key in LISTS), changes
    assert changes["to_version"] == veza_openai.__version__
    pushed = (state / "pushed.json").read_bytes()
    small_openai.org.users.pop()
    again = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--dry-run")
    assert again.returncode == 0, again.output
    assert (state / "pushed.json").read_bytes() == pushed


def test_previous_gives_the_same_comparison_without_a_state_directory(run_connector, openai_fake, veza, tmp_path):
    """A payload saved with --save-json, given to --previous by a run without a state directory, reports what the
    state directory's pushed.json reports: users, admin keys, keys activated and deactivated."""
    state, saved = tmp_path / "state", tmp_path / "previous.json"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--save-json", str(saved))
    assert first.returncode == 0, first.output
    org = openai_fake.org
    org.users[:] = [u for u in org.users if u["id"] != "user-0013"]
    find(org.api_keys["proj_alpha"], "key_svc1")["owner_project_access"] = "inactive"
    find(org.api_keys["proj_alpha"], "key_gone")["owner_project_access"] = "active"
    org.admin_api_keys.append({**find(org.admin_api_keys, "key_admin1"), "id": "key_admin2", "name": "second"})
    with_state = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(tmp_path / "a.json"))
    assert with_state.returncode == 0, with_state.output
    without = run_connector(*NO_ROLE_READS, "--previous", str(saved), "--changes-json", str(tmp_path / "b.json"))
    assert without.returncode == 0, without.output
    assert mode(tmp_path / "b.json") == 0o600
    from_state, from_previous = load(tmp_path / "a.json"), load(tmp_path / "b.json")
    assert from_state["users_left"] == ["user-0013"] and from_state["keys_deactivated"] == ["key_svc1"]
    assert from_state["keys_activated"] == ["key_gone"] and from_state["admin_keys_created"] == ["key_admin2"]
    assert normalized(from_previous) == normalized(from_state)
    logged = "\n".join(changes_logged(without.stderr))
    assert re.search(r"changes: 1 users? left \(user-0013\)", logged), logged
    assert re.search(r"changes: 1 keys? deactivated \(key_svc1\)", logged), logged
    assert re.search(r"changes: 1 keys? activated \(key_gone\)", logged), logged
    assert re.search(r"changes: 1 admin keys? created \(key_admin2\)", logged), logged


def test_a_previous_payload_of_another_organization_is_not_compared(run_connector, small_openai, tmp_path):
    """Comparing two organizations would report every user as joined and left: a warning instead, and the push
    stands."""
    saved = tmp_path / "other.json"
    first = run_connector(*NO_ROLE_READS, "--save-json", str(saved))
    assert first.returncode == 0, first.output
    payload = load(saved)
    payload["applications"][0]["custom_properties"]["organization_id"] = "org-other0001"
    saved.write_text(json.dumps(payload))
    result = run_connector(*NO_ROLE_READS, "--previous", str(saved))
    assert result.returncode == 0 and "outcome=pushed" in summary_line(result.stderr), result.output
    assert "changes since the last push not reported: ValueError: --previous holds organization org-other0001, " \
           "not org-" in result.stderr
    assert not [line for line in changes_logged(result.stderr) if "joined" in line or "left" in line]


def test_the_report_after_a_connector_upgrade_says_the_changes_include_it(run_connector, small_openai, tmp_path):
    """The last push was made by another version (pushed.json edited): the first change line says the changes
    include the upgrade, and the JSON names both versions."""
    state, report = tmp_path / "state", tmp_path / "changes.json"
    first = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert first.returncode == 0, first.output
    record = load(state / "pushed.json")
    versions = [key for key, value in record.items() if value == veza_openai.__version__]
    assert versions, f"pushed.json names no connector version at its top level: {sorted(record)}"
    (state / "pushed.json").write_text(json.dumps({**record, **dict.fromkeys(versions, "0.9.0")}))
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state), "--changes-json", str(report))
    assert result.returncode == 0, result.output
    lines = result.stderr.splitlines()
    upgrade = f"changes include the upgrade from 0.9.0 to {veza_openai.__version__}"
    said = [n for n, line in enumerate(lines) if upgrade in line]
    assert said, result.stderr
    assert all(said[0] <= n for n, line in enumerate(lines) if " changes: " in line), result.stderr  # first
    changes = load(report)
    assert changes["from_version"] == "0.9.0" and changes["to_version"] == veza_openai.__version__
