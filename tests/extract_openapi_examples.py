#!/usr/bin/env python3
"""Regenerate tests/openapi_examples/ from OpenAI's published OpenAPI document (openai/openai-openapi).

    python tests/extract_openapi_examples.py --git-dir /path/to/openai-openapi.git [--rev HEAD]
    python tests/extract_openapi_examples.py --checkout /path/to/openai-openapi

It reads `openapi.yaml` and writes, for every endpoint the connector reads, the documented example response
(`x-oaiMeta.examples.response`) as JSON, plus `_source.json` (repository, commit, and what was repaired) and
`_values.json` (the documented values of every field the connector decides on: schema enums, or the values a
description names in backticks, such as "`owner` or `reader`"). Only these extracted examples and values are
kept in this repository; the document itself is not.

Repairs, each listed per endpoint in `_source.json` and printed:
- trailing commas before `}` or `]` (the audit log and certificate examples are not valid JSON without this);
- `first_id` / `last_id` that name no item of `data` (e.g. "user-abc" / "user-xyz" for one item "user_abc")
  are set to the first and last item's id;
- `has_more: true` (the audit log example) becomes false: a replay serves one page, and the example's
  `last_id` names no event, so following it could only loop.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent / "openapi_examples"
REPOSITORY = "https://github.com/openai/openai-openapi"

# file name -> the documented GET path the connector reads
ENDPOINTS = {
    "users": "/organization/users",
    "invites": "/organization/invites",
    "admin_api_keys": "/organization/admin_api_keys",
    "groups": "/organization/groups",
    "roles": "/organization/roles",
    "projects": "/organization/projects",
    "audit_logs": "/organization/audit_logs",
    "certificates": "/organization/certificates",
    "project_users": "/organization/projects/{project_id}/users",
    "project_service_accounts": "/organization/projects/{project_id}/service_accounts",
    "project_api_keys": "/organization/projects/{project_id}/api_keys",
    "project_roles": "/projects/{project_id}/roles",
    "project_groups": "/organization/projects/{project_id}/groups",
    "model_permissions": "/organization/projects/{project_id}/model_permissions",
    "project_certificates": "/organization/projects/{project_id}/certificates",
    "hosted_tool_permissions": "/organization/projects/{project_id}/hosted_tool_permissions",
    "group_users": "/organization/groups/{group_id}/users",
    "group_roles": "/organization/groups/{group_id}/roles",
    "project_group_roles": "/projects/{project_id}/groups/{group_id}/roles",
    "user_roles": "/organization/users/{user_id}/roles",
    "project_user_roles": "/projects/{project_id}/users/{user_id}/roles",
    "project_object": "/organization/projects/{project_id}",
    "group_object": "/organization/groups/{group_id}",
    "user_object": "/organization/users/{user_id}",
}
# The workload identity endpoints the connector reads are not in the document (checked: no such path).
UNDOCUMENTED = ["/organization/workload_identity_providers",
                "/organization/workload_identity_providers/{provider_id}/federation_rules"]

# name -> (schema, property path): the fields whose value the mapping decides on
VALUE_FIELDS = {
    "users.role": ("User", ["role"]),
    "invites.role": ("Invite", ["role"]),
    "invites.status": ("Invite", ["status"]),
    "invites.projects.role": ("Invite", ["projects", "role"]),
    "projects.status": ("Project", ["status"]),
    "project_users.role": ("ProjectUser", ["role"]),
    "project_service_accounts.role": ("ProjectServiceAccount", ["role"]),
    "project_api_keys.owner_project_access": ("ProjectApiKey", ["owner_project_access"]),
    "project_api_keys.owner.type": ("ProjectApiKey", ["owner", "type"]),
    "admin_api_keys.owner.type": ("AdminApiKey", ["owner", "type"]),
    "admin_api_keys.owner.role": ("AdminApiKey", ["owner", "role"]),
    "groups.group_type": ("GroupResponse", ["group_type"]),
    "project_groups.group_type": ("ProjectGroup", ["group_type"]),
    "model_permissions.mode": ("ProjectModelPermissions", ["mode"]),
    "certificates.object": ("Certificate", ["object"]),
    "audit_logs.actor.type": ("AuditLogActor", ["type"]),
    "user_roles.assignment_sources.principal_type": ("AssignedRoleDetails", ["assignment_sources", "principal_type"]),
}

# name -> (path, method): values an operation's request body description names (the document disagrees with
# itself: User.role says "`owner` or `reader`", modifying a user's role says "`owner` or `member`")
REQUEST_VALUE_FIELDS = {"users.role (modify user)": ("/organization/users/{user_id}", "post")}


def load_document(args: argparse.Namespace) -> tuple[dict, str]:
    if args.git_dir:
        git = ["git", "--git-dir", args.git_dir]
        commit = subprocess.run([*git, "rev-parse", args.rev], check=True, capture_output=True, text=True).stdout
        text = subprocess.run([*git, "show", f"{args.rev}:openapi.yaml"], check=True, capture_output=True,
                              text=True).stdout
    else:
        text = (Path(args.checkout) / "openapi.yaml").read_text()
        commit = subprocess.run(["git", "-C", args.checkout, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout or "unknown"
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), commit.strip()


def without_trailing_commas(text: str) -> tuple[str, int]:
    """Drop commas that stand right before a closing bracket, outside strings; (text, how many)."""
    out, removed, in_string, escaped = [], 0, False, False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "," and text[i + 1:].lstrip()[:1] in ("}", "]"):
            removed += 1
            continue
        out.append(char)
    return "".join(out), removed


def repaired(text: str) -> tuple[object, list[str]]:
    repairs = []
    try:
        body = json.loads(text)
    except ValueError:
        text, removed = without_trailing_commas(text)
        body = json.loads(text)
        repairs.append(f"removed {removed} trailing comma(s): the documented example is not valid JSON")
    if isinstance(body, dict) and isinstance(body.get("data"), list) and body["data"]:
        ids = [item.get("id") for item in body["data"] if isinstance(item, dict)]
        for field, wanted in (("first_id", ids[0]), ("last_id", ids[-1])):
            if field in body and body[field] != wanted:
                repairs.append(f"{field} {body[field]!r} names no item; set to {wanted!r}")
                body[field] = wanted
    if isinstance(body, dict) and body.get("has_more") is True:
        repairs.append("has_more true -> false: one documented page, whose cursor names no item")
        body["has_more"] = False
    return body, repairs


def documented_values(schemas: dict, schema: str, path: list[str]) -> tuple[list[str], str]:
    node: dict = schemas[schema]
    for name in path:
        node = resolved(schemas, node)
        if node.get("type") == "array" or "items" in node:
            node = resolved(schemas, node["items"])
        node = resolved(schemas, node.get("properties", {}).get(name, {}))
        if "items" in node and name != path[-1]:
            node = resolved(schemas, node["items"])
    for option in [node, *node.get("anyOf", [])]:
        option = resolved(schemas, option)
        if option.get("type") == "array":
            option = resolved(schemas, option["items"])
        if "enum" in option:
            return [str(value) for value in option["enum"]], "enum"
    values = re.findall(r"`([^`]+)`", node.get("description", ""))
    return values, "description" if values else "none documented"


def resolved(schemas: dict, node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = schemas[node["$ref"].rsplit("/", 1)[-1]]
    if isinstance(node, dict) and "anyOf" in node and len(node["anyOf"]) == 2:
        others = [option for option in node["anyOf"] if option.get("type") != "null"]
        if len(others) == 1 and ("$ref" in others[0] or others[0].get("type") in ("object", "array")):
            return resolved(schemas, others[0])
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--git-dir", help="a bare clone or mirror of openai/openai-openapi")
    where.add_argument("--checkout", help="a work tree of openai/openai-openapi")
    parser.add_argument("--rev", default="HEAD")
    args = parser.parse_args()
    document, commit = load_document(args)
    paths = document["paths"]
    missing = [path for path in UNDOCUMENTED if path in paths]
    if missing:
        print(f"now documented, add them: {missing}", file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    source = {"repository": REPOSITORY, "commit": commit, "file": "openapi.yaml",
              "script": "tests/extract_openapi_examples.py", "undocumented": UNDOCUMENTED, "endpoints": {}}
    for name, path in ENDPOINTS.items():
        examples = paths[path]["get"]["x-oaiMeta"]["examples"]
        text = examples[0]["response"] if isinstance(examples, list) else examples["response"]
        body, repairs = repaired(text)
        (OUT / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
        source["endpoints"][name] = {"path": path, "repairs": repairs}
        for repair in repairs:
            print(f"{path}: {repair}")
    (OUT / "_source.json").write_text(json.dumps(source, indent=2) + "\n")
    schemas = document["components"]["schemas"]
    values = {}
    for name, (schema, path) in VALUE_FIELDS.items():
        found, how = documented_values(schemas, schema, path)
        values[name] = {"values": found, "from": f"{schema}.{'.'.join(path)} ({how})"}
    for name, (path, method) in REQUEST_VALUE_FIELDS.items():
        description = paths[path][method]["requestBody"].get("description", "")
        values[name] = {"values": re.findall(r"`([^`]+)`", description),
                        "from": f"{method.upper()} {path} request body (description)"}
    (OUT / "_values.json").write_text(json.dumps(values, indent=2) + "\n")
    print(f"wrote {len(ENDPOINTS)} examples and {len(values)} value lists from {REPOSITORY} at {commit}")


if __name__ == "__main__":
    main()
