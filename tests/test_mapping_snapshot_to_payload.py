"""Mapping a snapshot to the payload: one entity per id, determinism, left-out families, fixed role ids, helpers."""

from __future__ import annotations

import json

import pytest
from oaaclient.templates import OAAPermission

import veza_openai as vo

BASE = 1_700_000_000


def user(uid: str, role: str = "reader", **extra) -> dict:
    return {"object": "organization.user", "id": uid, "name": f"N {uid}", "email": f"{uid}@x.io", "role": role,
            "added_at": BASE, **extra}


def build(snapshot: vo.Snapshot) -> vo.MappingResult:
    return vo.build_application(snapshot)


def payload_of(result: vo.MappingResult) -> dict:
    return result.application.get_payload()


@pytest.mark.parametrize(("value", "expected"), [
    (BASE, "2023-11-14T22:13:20Z"), (BASE + 0.9, "2023-11-14T22:13:20Z"), (str(BASE), "2023-11-14T22:13:20Z"),
    ("2024-01-02T03:04:05+02:00", "2024-01-02T01:04:05Z"), ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
    (None, None), ("", None), ("not a time", None), (True, None), (10**20, None),
])
def test_timestamps_become_rfc3339_utc_with_z(value, expected):
    assert vo.rfc3339(value) == expected


D, M = OAAPermission, OAAPermission  # Data and Metadata canonicals below, by name


@pytest.mark.parametrize(("permission", "canonicals"), [
    ("api.organization.read", [M.MetadataRead]), ("api.projects.list", [M.MetadataRead]),
    ("api.groups.view", [M.MetadataRead]), ("api.keys.create", [M.MetadataCreate]),
    ("api.users.delete", [M.MetadataDelete]), ("api.roles.remove", [M.MetadataDelete]),
    ("api.billing.write", [M.MetadataWrite]), ("api.usage.update", [M.MetadataWrite]),
    ("api.organization.projects.api_keys.manage", [M.MetadataWrite]), ("api.mtls.admin", [M.MetadataWrite]),
    ("api.files.read", [D.DataRead]), ("api.files.write", [D.DataWrite]), ("api.batches.create", [D.DataCreate]),
    ("api.vector_stores.delete", [D.DataDelete]), ("api.fine_tuning.jobs.read", [D.DataRead]),
    ("api.model.request", [D.DataRead]), ("api.groups.use", [D.DataRead]), ("a.invoke", [D.DataRead]),
    ("api.all.read", [D.DataRead, M.MetadataRead]), ("api.widgets.WRITE", [D.DataWrite, M.MetadataWrite]),
    ("read", [D.DataRead, M.MetadataRead]), ("api.files.frobnicate", [D.Uncategorized]), ("", [D.Uncategorized]),
])
def test_permission_strings_map_by_area_and_verb_never_below_what_they_grant(permission, canonicals):
    """Content areas are data, management areas metadata; an area in neither list, or none, is both."""
    assert vo.canonical_permissions(permission) == canonicals


def test_the_same_user_twice_is_one_user_and_unknown_roles_warn_once_with_readers_permissions():
    snapshot = vo.Snapshot(org_id="org-u", users=[user("u1", "billing"), user("u1", "billing"),
                                                  user("u2", "billing"), {"role": "reader"}])
    result = build(snapshot)
    users = result.application.local_users
    assert list(users) == ["u1", "u2"]
    billing = result.application.local_roles["billing"]
    assert billing.name == "Billing"
    assert sorted(billing.permissions) == ["Read Organization", "Standard API Requests"]
    assert [w for w in result.warnings if "billing" in w] == [
        "unknown organization role 'billing': mapped to 'billing' with Reader's permissions"]


def test_a_user_without_email_has_no_identity_and_is_kept():
    result = build(vo.Snapshot(org_id="org-u", users=[{"id": "u9", "added_at": BASE, "role": "reader",
                                                       "email": None, "name": None, "user": None}]))
    entry = result.application.local_users["u9"].to_dict()
    assert entry["name"] == "u9" and "identities" not in entry and "email" not in entry
    assert entry["is_active"] is True and entry["created_at"] == "2023-11-14T22:13:20Z"


def test_missing_families_leave_out_what_hangs_on_them():
    snapshot = vo.Snapshot(org_id="org-u", users=[user("owner1", "owner")], projects=None,
                           project_api_keys=None, admin_api_keys=[
                               {"id": "key_proj", "redacted_value": "sk-proj-...abcd", "owner": {"id": "owner1"}},
                               {"id": "key_adm", "redacted_value": "sk-admin-...wxyz", "owner": {"id": "owner1"}}])
    result = build(snapshot)
    payload = payload_of(result)
    assert payload["applications"][0]["resources"] == []
    assert list(result.application.access_creds) == ["key_adm"]
    assert any("key_proj" in w and "is neither an admin key" in w for w in result.warnings)
    owner_roles = result.application.local_users["owner1"].role_assignments
    assert list(owner_roles) == ["owner"]


def test_mapping_is_deterministic_for_the_same_snapshot():
    def snapshot() -> vo.Snapshot:
        return vo.Snapshot(
            org_id="org-d", users=[user(f"u{i}", "owner" if i == 0 else "reader") for i in range(30)],
            projects=[{"id": f"p{i}", "name": f"P{i}", "created_at": BASE, "status": "active"} for i in range(5)],
            project_users={f"p{i}": [{"id": f"u{i}", "role": "member"}] for i in range(5)},
            groups=[{"id": "g1", "name": "G", "created_at": BASE, "group_type": "group", "is_scim_managed": True}],
            group_users={"g1": [{"id": "u3", "name": "N u3"}]})
    first = json.dumps(payload_of(build(snapshot())), sort_keys=False)
    assert first == json.dumps(payload_of(build(snapshot())), sort_keys=False)


def test_a_role_id_that_clashes_with_a_fixed_role_never_replaces_it():
    snapshot = vo.Snapshot(org_id="org-u", users=[user("u1")],
                           roles=[{"id": "owner", "name": "Evil", "permissions": ["x.read"], "predefined_role": False,
                                   "resource_type": "api.organization"}])
    result = build(snapshot)
    assert result.application.local_roles["owner"].name == "Owner"
    assert result.application.local_roles["roles_api_owner"].name == "Evil"
    assert any("has a fixed role's id; kept, with its assignments, as 'roles_api_owner'" in w
               for w in result.warnings)


def test_cyclic_gc_is_paused_only_while_mapping(monkeypatch):
    import gc
    assert gc.isenabled()
    seen = []
    mapping = vo.build_application
    monkeypatch.setattr(vo, "read_organization", lambda *args: vo.Snapshot("org-x"))
    monkeypatch.setattr(vo, "build_application", lambda snapshot: seen.append(gc.isenabled()) or mapping(snapshot))
    vo.discover(vo.Config(org_id="org-x"), vo.Clock(), vo.RunSummary(), None)
    assert seen == [False] and gc.isenabled()
