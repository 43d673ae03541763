"""The fake OpenAI cannot drift from the real API: the official SDK parses and auto-paginates its answers."""

from __future__ import annotations

import importlib

import pytest
from conftest import OPENAI_SECRET
from fake_openai import BASE_TIME, FakeOpenAI, Fault, demo_organization, generate_organization


class _ImportedOnFirstUse:
    """The openai SDK, imported when a test first uses it: importing it costs each pytest-xdist worker about
    half a second of CPU, and most workers never run these tests."""

    def __getattr__(self, name: str):
        if name.startswith("_"):  # pytest's collection inspects every module attribute: no import for that
            raise AttributeError(name)
        return getattr(importlib.import_module("openai"), name)


openai = _ImportedOnFirstUse()


@pytest.fixture
def sdk(openai_fake):
    client = openai.OpenAI(admin_api_key=OPENAI_SECRET, api_key="unused", base_url=openai_fake.base_url,
                           max_retries=0, _strict_response_validation=True)
    yield client.admin.organization
    client.close()


def ids(page) -> list[str]:
    return [item.id for item in page]


def test_sdk_pages_through_users_invites_projects_and_admin_keys(sdk, openai_fake):
    org = openai_fake.org
    assert ids(sdk.users.list(limit=100)) == [u["id"] for u in org.users]
    assert openai_fake.calls(r"^/organization/users$") == 2
    assert ids(sdk.invites.list(limit=2)) == [i["id"] for i in org.invites]
    assert ids(sdk.projects.list(limit=1, include_archived=True)) == ["proj_alpha", "proj_beta"]
    assert ids(sdk.projects.list(limit=1)) == ["proj_alpha"]  # archived hidden by default
    assert ids(sdk.admin_api_keys.list(limit=1)) == [k["id"] for k in org.admin_api_keys]  # item-id cursor


def test_sdk_parses_every_per_project_list(sdk, openai_fake):
    org = openai_fake.org
    for pid in ("proj_alpha", "proj_beta"):
        assert ids(sdk.projects.users.list(pid, limit=1)) == [u["id"] for u in org.project_users.get(pid, [])]
        assert ids(sdk.projects.service_accounts.list(pid, limit=1)) == [
            s["id"] for s in org.service_accounts.get(pid, [])]
        assert ids(sdk.projects.roles.list(pid, limit=1)) == [r["id"] for r in org.project_roles.get(pid, [])]
    keys = list(sdk.projects.api_keys.list("proj_alpha", limit=1, extra_query={"owner_project_access": "any"}))
    assert [k.id for k in keys] == ["key_user1", "key_svc1", "key_gone"]
    assert keys[1].owner.service_account.id == "svc_deploy"
    active_only = ids(sdk.projects.api_keys.list("proj_alpha", limit=1))
    assert active_only == ["key_user1", "key_svc1"]  # without `any`, the inactive owner's key is hidden
    assert [g.group_id for g in sdk.projects.groups.list("proj_alpha", limit=1)] == ["group_eng"]
    policy = sdk.projects.model_permissions.retrieve("proj_alpha")
    assert policy.mode == "allow_list" and policy.api_model_ids == ["gpt-4o", "gpt-4o-mini"]


def test_sdk_pages_through_next_cursor_lists(sdk, openai_fake):
    org = openai_fake.org
    assert ids(sdk.groups.list(limit=1)) == [g["id"] for g in org.groups]
    assert ids(sdk.groups.users.list("group_eng", limit=1)) == [u["id"] for u in org.group_users["group_eng"]]
    assert ids(sdk.groups.roles.list("group_fin", limit=1)) == ["role-custom-billing"]
    assert ids(sdk.roles.list(limit=1)) == [r["id"] for r in org.roles]
    assert ids(sdk.users.roles.list("user-0013", limit=1)) == ["role-custom-billing"]
    inherited = list(sdk.users.roles.list("user-0012"))
    assert inherited[0].assignment_sources[0].principal_type == "group"
    assert ids(sdk.projects.groups.roles.list("group_eng", project_id="proj_alpha", limit=1)) == [
        "role-custom-proj-deployer"]
    assert ids(sdk.projects.users.roles.list("user-0011", project_id="proj_alpha", limit=1)) == [
        "role-custom-proj-deployer"]


def test_sdk_parses_the_benchmark_organization():
    fake = FakeOpenAI(generate_organization(users=150, projects=3, groups=2, custom_roles=True),
                      admin_key=OPENAI_SECRET).start()
    try:
        client = openai.OpenAI(admin_api_key=OPENAI_SECRET, api_key="unused", base_url=fake.base_url,
                               max_retries=0, _strict_response_validation=True)
        org = client.admin.organization
        assert len(list(org.users.list(limit=100))) == 150
        assert len(list(org.projects.api_keys.list("proj_00001", limit=2))) == 5
        assert len(list(org.groups.users.list("group_0001", limit=7))) == 20
        assert len(list(org.roles.list())) == 2
    finally:
        fake.stop()


def test_demo_organization_is_what_the_fake_serves_by_default():
    assert demo_organization().org_id == "org-demo0001"


def newest_first(events: list[dict]) -> list[str]:
    return [e["id"] for e in sorted(events, key=lambda e: (e["effective_at"], e["id"]), reverse=True)]


def test_sdk_pages_through_audit_logs_newest_first_with_filters(sdk, openai_fake):
    events = openai_fake.org.audit_logs
    every = list(sdk.audit_logs.list(limit=3))
    assert [e.id for e in every] == newest_first(events)
    assert openai_fake.calls(r"^/organization/audit_logs$") == 5  # 14 events at 3 a page
    by_id = {e.id: e for e in every}
    assert by_id["audit_log-demo003"].actor.session.user.id == "user-0010"
    assert by_id["audit_log-demo010"].api_key_created.data.scopes == ["api.model.request"]
    assert by_id["audit_log-demo011"].api_key_updated.changes_requested.scopes == [
        "api.model.request", "api.files.write"]
    assert by_id["audit_log-demo011"].actor.api_key.user.id == "user-0000"
    assert by_id["audit_log-demo006"].login_failed.error_code == "invalid_password"

    cutoff = max(e["effective_at"] for e in events) - 90 * 86_400
    logins = list(sdk.audit_logs.list(event_types=["login.succeeded"], effective_at={"gte": cutoff}, limit=2))
    recent = [e for e in events if e["type"] == "login.succeeded" and e["effective_at"] >= cutoff]
    assert [e.id for e in logins] == newest_first(recent)
    assert {e.type for e in logins} == {"login.succeeded"}  # login.failed, logout and the rest are left out
    assert "audit_log-demo001" not in {e.id for e in logins}  # 200 days old
    assert "audit_log-demo008" not in {e.id for e in logins}
    latest: dict[str, int] = {}
    for event in logins:
        latest.setdefault(event.actor.session.user.id, event.effective_at)
    assert set(latest) == {"user-0000", "user-0010", "user-0011", "user-9999"}

    both = list(sdk.audit_logs.list(event_types=["api_key.created", "api_key.updated"], limit=1))
    assert [e.id for e in both] == newest_first([e for e in events if e["type"].startswith("api_key.")])
    by_actor = list(sdk.audit_logs.list(actor_ids=["user-0010", "user-0011"], event_types=["login.succeeded"]))
    assert {e.actor.session.user.id for e in by_actor} == {"user-0010", "user-0011"} and len(by_actor) == 4
    assert [e.id for e in sdk.audit_logs.list(effective_at={"gte": cutoff, "lt": cutoff + 1})] == []


def test_audit_log_query_errors_and_refusal(sdk, openai_fake):
    with pytest.raises(openai.BadRequestError):
        list(sdk.audit_logs.list(limit=101))
    with pytest.raises(openai.BadRequestError):
        sdk.audit_logs.list(extra_query={"effective_at[gte]": "yesterday"})
    openai_fake.refused["audit logs"] = 403
    with pytest.raises(openai.PermissionDeniedError):
        sdk.audit_logs.list()


def by_created(records: list[dict], order: str = "desc") -> list[str]:
    return [r["id"] for r in sorted(records, key=lambda r: r["created_at"], reverse=order == "desc")]


def test_sdk_pages_through_workload_identity_providers_and_rules(sdk, openai_fake):
    org = openai_fake.org
    wif = sdk.workload_identity_providers
    providers = list(wif.list(limit=1))  # SyncCursorPage: after = the last item's id
    assert [p.id for p in providers] == by_created(org.workload_identity_providers) == ["wip_legacy", "wip_github"]
    assert ids(wif.list(limit=1, order="asc")) == ["wip_github", "wip_legacy"]
    github = next(p for p in providers if p.id == "wip_github")
    assert (github.issuer, github.audience, github.enabled, github.type) == (
        "https://token.actions.githubusercontent.com", "api://openai", True, "oidc")
    assert github.verification.type == "discovery"
    assert next(p for p in providers if p.id == "wip_legacy").enabled is False
    rules = list(wif.federation_rules.list("wip_github", limit=1, order="asc"))
    assert [r.id for r in rules] == ["wifr_deploy_main", "wifr_unknown_sa"]
    assert openai_fake.calls(r"/federation_rules$") == 2
    restricted, default = rules
    assert restricted.permissions.type == "restricted" and restricted.permissions.scopes == [
        "api.model.request", "api.files.read"]
    assert restricted.attribute_matchers == {"repository": "acme/app", "ref": "refs/heads/main"}
    assert (restricted.project_id, restricted.service_account_id, restricted.workload_identity_provider_id) == (
        "proj_alpha", "svc_deploy", "wip_github")
    assert default.permissions.type == "service_account_default" and default.name is None
    assert default.attribute_matchers == {"repository_owner": "acme", "run_attempt": 1, "pull_request": False}
    assert ids(wif.federation_rules.list("wip_legacy", limit=1)) == ["wifr_legacy_deploy"]
    assert ids(wif.federation_rules.list("wip_github", service_account_id="svc_deploy")) == ["wifr_deploy_main"]
    with pytest.raises(openai.NotFoundError):
        wif.federation_rules.list("wip_nope")
    openai_fake.refused["federation rules"] = 403
    with pytest.raises(openai.PermissionDeniedError):
        wif.federation_rules.list("wip_github")
    openai_fake.refused["workload identity providers"] = 404
    with pytest.raises(openai.NotFoundError):
        wif.list()


def test_sdk_pages_through_certificates_without_the_pem(sdk, openai_fake):
    org = openai_fake.org
    listed = list(sdk.certificates.list(limit=1))
    assert [c.id for c in listed] == ["cert_org_root"]
    root = listed[0]
    assert (root.object, root.name, root.active) == ("organization.certificate", "Corporate root CA", True)
    assert root.certificate_details.valid_at == org.certificates[0]["certificate_details"]["valid_at"]
    assert root.certificate_details.expires_at > root.certificate_details.valid_at
    assert "content" not in root.certificate_details.model_dump()  # the list model has no PEM
    project = list(sdk.projects.certificates.list("proj_alpha", limit=1))
    assert [(c.id, c.object, c.active) for c in project] == [
        ("cert_alpha_mtls", "organization.project.certificate", False)]
    assert list(sdk.projects.certificates.list("proj_beta")) == []
    with pytest.raises(openai.NotFoundError):
        sdk.projects.certificates.list("proj_nope")
    org.certificate_content_in_lists = True  # an API that leaks the PEM into lists, for connector tests
    leaked = list(sdk.certificates.list())[0]
    assert leaked.certificate_details.model_extra["content"].startswith("-----BEGIN CERTIFICATE-----")
    org.project_certificates["proj_alpha"].extend(
        {**org.project_certificates["proj_alpha"][0], "id": f"cert_more{i}", "created_at": BASE_TIME + 500 + i}
        for i in range(3))
    assert ids(sdk.projects.certificates.list("proj_alpha", limit=2)) == [
        "cert_more2", "cert_more1", "cert_more0", "cert_alpha_mtls"]
    assert openai_fake.calls(r"^/organization/projects/proj_alpha/certificates$") == 1 + 2  # 4 at 2 a page
    assert ids(sdk.projects.certificates.list("proj_alpha", limit=3, order="asc"))[0] == "cert_alpha_mtls"
    openai_fake.refused["project certificates"] = 403
    with pytest.raises(openai.PermissionDeniedError):
        sdk.projects.certificates.list("proj_alpha")


def test_sdk_reads_hosted_tool_permissions(sdk, openai_fake):
    alpha = sdk.projects.hosted_tool_permissions.retrieve("proj_alpha")
    enabled = {tool: getattr(alpha, tool).enabled for tool in
               ("code_interpreter", "file_search", "image_generation", "mcp", "web_search")}
    assert enabled == {"code_interpreter": False, "file_search": False, "image_generation": False, "mcp": True,
                       "web_search": True}
    beta = sdk.projects.hosted_tool_permissions.retrieve("proj_beta")
    assert not any(getattr(beta, tool).enabled for tool in enabled)
    with pytest.raises(openai.NotFoundError):
        sdk.projects.hosted_tool_permissions.retrieve("proj_nope")
    openai_fake.refused["hosted tool permissions"] = 403
    with pytest.raises(openai.PermissionDeniedError):
        sdk.projects.hosted_tool_permissions.retrieve("proj_alpha")


def test_sdk_parses_the_benchmark_organizations_access_review_families():
    generated = generate_organization(users=150, projects=7, groups=1, login_every=10, wif_every=3, certificates=2,
                                      hosted_tools=True)
    fake = FakeOpenAI(generated, admin_key=OPENAI_SECRET).start()
    try:
        client = openai.OpenAI(admin_api_key=OPENAI_SECRET, api_key="unused", base_url=fake.base_url,
                               max_retries=0, _strict_response_validation=True)
        org = client.admin.organization
        events = list(org.audit_logs.list(limit=100))
        assert len(events) == 3 * 15 + 2 * 1 and events == sorted(events, key=lambda e: -e.effective_at)
        cutoff = max(e.effective_at for e in events) - 90 * 86_400
        logins = list(org.audit_logs.list(event_types=["login.succeeded"], effective_at={"gte": cutoff}, limit=7))
        assert len(logins) == 15 and len({e.actor.session.user.id for e in logins}) == 15
        scoped = list(org.audit_logs.list(event_types=["api_key.created", "api_key.updated"], limit=1))
        assert scoped[0].api_key_updated.changes_requested.scopes == ["api.model.request", "api.files.write"]
        assert ids(org.workload_identity_providers.list(limit=1)) == ["wip_bench_off", "wip_bench"]
        rules = list(org.workload_identity_providers.federation_rules.list("wip_bench", limit=2))
        assert sorted(r.project_id for r in rules) == ["proj_00000", "proj_00003", "proj_00006"]
        assert {r.permissions.type for r in rules} == {"restricted", "service_account_default"}
        assert ids(org.certificates.list()) == ["cert_org"]
        assert len(list(org.projects.certificates.list("proj_00006", limit=1))) == 2
        assert org.projects.hosted_tool_permissions.retrieve("proj_00006").mcp.enabled is True
        assert org.projects.hosted_tool_permissions.retrieve("proj_00001").web_search.enabled is False
    finally:
        fake.stop()


def test_the_benchmark_organization_has_no_access_review_data_unless_asked():
    generated = generate_organization(users=10, projects=2, groups=1)
    assert not (generated.audit_logs or generated.workload_identity_providers or generated.certificates
                or generated.project_certificates or generated.hosted_tool_permissions)


def test_faults_reach_the_new_endpoints(sdk, openai_fake):
    openai_fake.faults += [Fault(r"^/organization/audit_logs$", skip=1), Fault(r"/federation_rules$", status=503),
                           Fault(r"/hosted_tool_permissions$", status=429), Fault(r"/certificates$", kind="nonjson")]
    pages = sdk.audit_logs.list(limit=5)
    with pytest.raises(openai.InternalServerError):  # the second page fails
        list(pages)
    with pytest.raises(openai.InternalServerError):
        sdk.workload_identity_providers.federation_rules.list("wip_github")
    with pytest.raises(openai.RateLimitError):
        sdk.projects.hosted_tool_permissions.retrieve("proj_alpha")
    with pytest.raises(openai.APIResponseValidationError):
        sdk.certificates.list()
    assert len(list(sdk.audit_logs.list(limit=5))) == len(openai_fake.org.audit_logs)  # each fault fired once


def test_sdk_retrieves_one_project_user_group_and_provider_and_sees_404_for_a_deleted_one(sdk, openai_fake):
    assert sdk.projects.retrieve("proj_alpha").id == "proj_alpha"
    assert sdk.users.retrieve("user-0007").id == "user-0007"
    assert sdk.groups.retrieve("group_eng").id == "group_eng"
    provider = openai_fake.org.workload_identity_providers[0]["id"]
    assert sdk.workload_identity_providers.retrieve(provider).id == provider
    with pytest.raises(openai.NotFoundError):
        sdk.projects.retrieve("proj_gone")
