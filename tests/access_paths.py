"""Who reaches one project, and by which path, computed from a pushed OAA payload alone (the fake Veza's copy).

Veza evaluates the payload's graph; the fake Veza does not, so the tests and the demo follow the same edges
here. A principal or key reaches a project when any of these holds:

- direct: a local user (member, service account, invitee) holds a role on the project resource;
- groups: a group holds a role on the project; through groups: a member of such a group;
- owners: an identity holds `project_owner_via_organization` on the project, itself or through a group;
- organization roles: a user or group holds, on the application, a role with a permission that applies to
  sub-resources of type project (`apply_to_sub_resources`), and the members of such a group;
- admin keys: a credential holds such an application role (every admin key, `admin_api_key`);
- project keys, federation rules: a credential holds a role on the project resource (federation rules are the
  credentials with a `workload_identity_provider_id`).

Paths overlap (a listed member who is also in a listed group is on both); `reaching` gives each path's ids and
`everyone` their union.
"""

from __future__ import annotations

PATHS = ("direct", "groups", "through groups", "owners", "organization roles", "admin keys", "project keys",
         "federation rules")
# How the demo names each path's count: (one, several).
PATH_NOUNS = {"direct": ("direct member", "direct members"), "groups": ("group", "groups"),
              "through groups": ("member through groups", "members through groups"),
              "owners": ("owner", "owners"),
              "organization roles": ("holder of an organization role", "holders of an organization role"),
              "admin keys": ("admin key", "admin keys"), "project keys": ("project key", "project keys"),
              "federation rules": ("federation rule", "federation rules")}
IMPLICIT_OWNER = "project_owner_via_organization"


def spreading_permissions(payload: dict) -> set[str]:
    """Custom permissions that, held on the application, also hold on every project."""
    return {p["name"] for p in payload.get("permissions", [])
            if p.get("apply_to_sub_resources") and (not p.get("resource_types") or "project" in p["resource_types"])}


def reaching(payload: dict, project_id: str) -> dict[str, set[str]]:
    """Path name -> ids of the users, groups and credentials that reach `project_id` along it."""
    app = payload["applications"][0]
    spreading = spreading_permissions(payload)
    spreading_roles = {role["id"] for role in app.get("local_roles", [])
                       if spreading & set(role.get("permissions") or [])}
    creds = {cred["id"]: cred for cred in app.get("local_access_creds", [])}
    members: dict[str, set[str]] = {}
    for user in app.get("local_users", []):
        for group_id in user.get("groups") or []:
            members.setdefault(group_id, set()).add(user["id"])
    paths: dict[str, set[str]] = {path: set() for path in PATHS}
    for entry in payload.get("identity_to_permissions", []):
        identity, kind = entry["identity"], entry.get("identity_type")
        on_project, on_application = set(), set()
        for assignment in entry.get("role_assignments") or []:
            if assignment.get("apply_to_application"):
                on_application.add(assignment["role"])
            if project_id in (assignment.get("resources") or []):
                on_project.add(assignment["role"])
        reaches_by_role = bool(on_application & spreading_roles)
        if kind == "local_access_creds":
            if on_project:
                federated = "workload_identity_provider_id" in (creds.get(identity, {}).get("custom_properties")
                                                                 or {})
                paths["federation rules" if federated else "project keys"].add(identity)
            if reaches_by_role:
                paths["admin keys"].add(identity)
            continue
        group_members = members.get(identity, set()) if kind == "local_group" else set()
        if IMPLICIT_OWNER in on_project:
            paths["owners"].add(identity)
            paths["owners"] |= group_members
        if kind == "local_group" and on_project:
            paths["groups"].add(identity)
            paths["through groups"] |= group_members
        if kind == "local_user" and on_project - {IMPLICIT_OWNER}:
            paths["direct"].add(identity)
        if reaches_by_role:
            paths["organization roles"].add(identity)
            paths["organization roles"] |= group_members
    return paths


def everyone(paths: dict[str, set[str]]) -> set[str]:
    return set().union(*paths.values())


def describe(payload: dict, project_id: str) -> str:
    """One line for people: how many reach the project along each path, and how many in all."""
    paths = reaching(payload, project_id)
    counts = ", ".join(f"{len(ids)} {PATH_NOUNS[path][len(ids) != 1]}" for path, ids in paths.items())
    total = len(everyone(paths))
    return f"project {project_id} is reached by: {counts} ({total} principals and keys in all)"
