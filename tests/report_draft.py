"""Draft of the Veza report `--create-report` will create or update, as Python literals to move into the connector.

Shape: what `oaaclient.utils.build_report(client, definition)` takes, i.e. the same JSON as Veza's community
connectors' report files (oaa-community: connectors/github/report.json, connectors/bitbucket-cloud/
report-bitbucket-security.json, connectors/rollbar/report-rollbar-security.json).

Node type names. Veza names OAA custom-application entities `OAA.<application_type>.<kind>`; the community
report files show, for application_type "Github" / "Bitbucket" / "Rollbar":
    OAA.Github.User, OAA.Github.Application, OAA.Rollbar.Group, OAA.Bitbucket.Permission,
    OAA.Github.repository.Resource (resource_type "repository", case kept), OAA.Bitbucket.Repo.SubResource.
So for APPLICATION_TYPE "OpenAI": local users are `OAA.OpenAI.User` (not "LocalUser"), the application is
`OAA.OpenAI.Application`, projects (resource_type "project") are `OAA.OpenAI.project.Resource`.
Local roles (`OAA.OpenAI.Role`) and access credentials (`OAA.OpenAI.AccessCred`) follow the same rule but no
public file I found names them: check both in the Query Builder before relying on them.

Custom properties are queried as `customprop_<name>` (community files: customprop_outsidecollaborator,
customprop_is_private, customprop_default_branch_protected); built-in ones (is_active, last_login_at,
last_used_at, expires_at, name) keep their names.

Conditions use `condition_expression: {"specs": [{"fn": "EQ", "property": ..., "value": ...}]}` (Veza's query
API docs; the community files omit "fn", which defaults to equality). Specs in one list are ANDed.
"""

from __future__ import annotations

APPLICATION_TYPE = "OpenAI"  # veza_openai.APPLICATION_TYPE
USER = f"OAA.{APPLICATION_TYPE}.User"
APPLICATION = f"OAA.{APPLICATION_TYPE}.Application"
PROJECT = f"OAA.{APPLICATION_TYPE}.project.Resource"
ACCESS_CRED = f"OAA.{APPLICATION_TYPE}.AccessCred"  # unverified name, see above
ROLE = f"OAA.{APPLICATION_TYPE}.Role"  # unverified name, see above

REPORT_NAME = "OpenAI access review"
# Note: oaaclient 1.2.0's build_report ignores this and sets the description to the report's name;
# to keep it, create the report with client.create_report({...}) yourself.
REPORT_DESCRIPTION = ("Who can administer the OpenAI organization, which API keys are stale or never expire, "
                      "leftover access of inactive users and pending invites, and projects with tools enabled.")


def _nodes(node_type: str, *specs: dict) -> dict:
    node: dict = {"node_type": node_type}
    if specs:
        node["condition_expression"] = {"specs": list(specs)}
    return {"nodes": [node]}


def _eq(prop: str, value: object) -> dict:
    return {"fn": "EQ", "property": prop, "value": value}


# Queries expressed only with constructs the community report files already use (equality on a property,
# raw_permissions against the Application, relates_to_exp): confident they save as written.
QUERIES: list[dict] = [
    {
        "name": "OpenAI organization owners",
        "description": "OpenAI users whose organization role can manage members and billing (Owner)",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(USER),
        "destination_node_types": _nodes(APPLICATION),
        # Only the Owner role holds "Manage Members" on the organization (FIXED_ROLES); pattern of
        # "GitHub Users with Organization Admin". Pending invites for the owner role are listed too.
        "raw_permissions": {"values": ["Manage Members"], "operator": "OR"},
    },
    {
        "name": "OpenAI admin API keys",
        "description": "Admin API keys: credentials holding the organization-wide Admin API Key role",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(ACCESS_CRED),
        "relates_to_exp": {"specs": [{"node_types": _nodes(ROLE, _eq("name", "Admin API Key"))}]},
    },
    {
        "name": "OpenAI inactive users still holding roles",
        "description": "Deactivated or banned OpenAI users (and pending invites) with any role on the org or a project",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(USER, _eq("is_active", False)),
        "relates_to_exp": {"specs": [{"node_types": _nodes(ROLE)}]},
    },
    {
        "name": "OpenAI pending invites",
        "description": "Invited users who have not accepted yet, with the roles the invite grants",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(USER, _eq("customprop_invite_status", "pending")),
    },
    {
        "name": "OpenAI projects with MCP enabled",
        "description": "Projects whose settings allow MCP tools",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(PROJECT, _eq("customprop_mcp_enabled", True)),
    },
    {
        "name": "OpenAI projects with web search enabled",
        "description": "Projects whose settings allow the web search tool",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(PROJECT, _eq("customprop_web_search_enabled", True)),
    },
]

# Queries that need an operator no public example shows: "unset" (null) and "older than N days".
# Veza's custom-properties doc says TIMESTAMP properties get "date-relative filters such as 'in the last
# 30 days'", so these are expressible in the Query Builder, but the JSON spelling below (fn names, the
# relative value) is my guess. Before shipping: build each in the Query Builder, Save > "View Query Spec
# API", and paste the spec here. Until then keep them out of the report (a spec Veza rejects fails the
# whole build_report).
STALE_DAYS = 90
NEEDS_SPEC_CHECK: list[dict] = [
    {
        "name": f"OpenAI project API keys unused for {STALE_DAYS} days",
        "description": f"Project API keys never used, or not used in the last {STALE_DAYS} days",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(ACCESS_CRED, {"fn": "NOT_IN_LAST_N_DAYS", "property": "last_used_at",
                                                  "value": STALE_DAYS}),
        "destination_node_types": _nodes(PROJECT),
    },
    {
        "name": "OpenAI API keys without expiry",
        "description": "API keys with no expiry date",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(ACCESS_CRED, {"fn": "IS_NULL", "property": "expires_at"}),
    },
    {
        "name": f"OpenAI users without login in {STALE_DAYS} days",
        "description": f"Active users with no recorded login, or none in the last {STALE_DAYS} days",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(USER, _eq("is_active", True),
                                    {"fn": "NOT_IN_LAST_N_DAYS", "property": "last_login_at", "value": STALE_DAYS}),
    },
    {
        "name": "OpenAI federated workload identity rules",
        "description": "Credentials standing for a workload identity federation rule",
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": _nodes(ACCESS_CRED, {"fn": "IS_NOT_NULL",
                                                  "property": "customprop_workload_identity_provider_id"}),
    },
]

# question -> (can Veza's query model express it?, confidence, how)
EXPRESSIBLE: dict[str, tuple[str, str, str]] = {
    "organization owners": ("yes", "high", "raw_permissions 'Manage Members' on OAA.OpenAI.Application"),
    "admin API keys": ("yes", "medium", "AccessCred related to Role 'Admin API Key'; both type names unverified"),
    "project API keys never used or unused 90 days": (
        "yes", "medium", "relative-date + null on last_used_at; JSON spelling unverified (NEEDS_SPEC_CHECK)"),
    "keys with no expiry": ("yes", "medium", "null test on expires_at; JSON spelling unverified"),
    "inactive users still holding roles": (
        "yes", "high", "is_active = false related to a Role; includes pending invites (also is_active = false) "
                       "unless a 'not equal' spec on customprop_invite_status is added"),
    "pending invites": ("yes", "high", "customprop_invite_status = 'pending'"),
    "no login in the activity window": (
        "yes", "medium", "relative-date + null on last_login_at; only as good as the connector's last_login_at"),
    "projects with MCP or web search enabled": (
        "yes", "high", "two queries (one per BOOLEAN custom property); one query would need OR between specs"),
    "federated workload rules": ("yes", "medium", "'is set' on customprop_workload_identity_provider_id"),
}


def report_definition(queries: list[dict] | None = None) -> dict:
    """The dict build_report takes."""
    return {"name": REPORT_NAME, "description": REPORT_DESCRIPTION,
            "queries": [dict(query) for query in (QUERIES if queries is None else queries)]}
