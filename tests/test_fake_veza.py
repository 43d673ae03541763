"""The fake Veza answers oaaclient's own calls: saved queries and reports, push misbehaviours, team keys."""

from __future__ import annotations

import json
import time

import oaaclient
import pytest
import requests
from conftest import VEZA_SECRET
from fake_veza import GATEWAY_PAGE, HTML_PAGE, REPORTS, PushAnswer
from oaaclient import utils as oaautils
from oaaclient.client import OAAClient, OAAClientError, OAAConnectionError, OAAResponseError

import veza_openai as vo

PAYLOAD = json.dumps({"applications": [{"name": "org-1"}], "permissions": []})


@pytest.fixture
def client(veza, ca, monkeypatch) -> OAAClient:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca[1])
    monkeypatch.setenv("OAA_API_RETRIES", "0")
    return OAAClient(url=veza.url, api_key=VEZA_SECRET)


QUERIES = vo.REPORT_QUERIES
REPORT_NAME = vo.REPORT_NAME


def report_definition(queries: list[dict] | None = None) -> dict:
    """The connector's report in the shape oaaclient's build_report takes."""
    return {"name": REPORT_NAME, "queries": list(QUERIES if queries is None else queries)}


def writes(veza, since: int = 0) -> list[tuple[str, str]]:
    return [(method, path) for method, path in veza.requests[since:] if method != "GET"]


# --- saved queries and reports -------------------------------------------------------------------

def test_query_and_report_calls_round_trip(client, veza):
    query = client.create_query(QUERIES[0])
    assert query["id"] and query["name"] == QUERIES[0]["name"]
    assert [q["id"] for q in client.get_queries()] == [query["id"]]
    assert client.get_query_by_id(query["id"])["source_node_types"] == QUERIES[0]["source_node_types"]
    client.api_put(f"/api/v1/assessments/queries/{query['id']}", {**QUERIES[0], "description": "changed"})
    assert veza.queries[0]["description"] == "changed" and veza.queries[0]["id"] == query["id"]

    report = client.create_report({"name": "R", "description": "d", "queries": [{"query": query["id"]}]})
    second = client.create_query(QUERIES[1])
    client.add_query_report(report["id"], second["id"])
    client.add_query_report(report["id"], second["id"])  # adding twice keeps one
    assert [r["name"] for r in client.get_reports()] == ["R"]
    assert client.get_report_by_id(report["id"])["queries"] == [{"query": query["id"]}, {"query": second["id"]}]
    client.update_report(report["id"], {"name": "R", "description": "new", "queries": [{"query": second["id"]}]})
    assert veza.reports[0]["description"] == "new" and veza.reports[0]["queries"] == [{"query": second["id"]}]

    with pytest.raises(OAAResponseError) as refused:  # still in a report
        client.delete_query(second["id"])
    assert refused.value.status_code == 400
    client.delete_query(second["id"], force=True)
    assert veza.reports[0]["queries"] == [] and veza.query_names() == [QUERIES[0]["name"]]
    client.delete_report(report["id"])
    assert veza.reports == []
    assert ("PUT", f"{REPORTS}/{report['id']}/queries/{second['id']}") in veza.requests


def test_lists_are_paged_as_oaaclient_follows_them(client, veza, monkeypatch):
    for number in range(7):
        client.create_query({**QUERIES[0], "name": f"q{number}"})
    monkeypatch.setattr(client, "DEFAULT_PAGE_SIZE", 3)
    assert [q["name"] for q in client.get_queries()] == [f"q{n}" for n in range(7)]
    assert sum(path.endswith("/queries") and method == "GET" for method, path in veza.requests) == 3


def test_build_report_twice_creates_nothing_new(client, veza):
    first = oaautils.build_report(client, report_definition())
    assert first["name"] == REPORT_NAME
    assert veza.query_names() == [q["name"] for q in QUERIES]
    assert veza.report_queries(REPORT_NAME) == [q["name"] for q in QUERIES]
    state = json.dumps([veza.queries, veza.reports], sort_keys=True)

    mark = len(veza.requests)
    again = oaautils.build_report(client, report_definition())
    assert writes(veza, mark) == [], "the second run only reads"
    assert again["id"] == first["id"]
    assert json.dumps([veza.queries, veza.reports], sort_keys=True) == state


def test_build_report_skips_system_queries_of_the_same_name(client, veza):
    system = veza.add_system_query(QUERIES[0]["name"])
    oaautils.build_report(client, report_definition())
    assert veza.query_names().count(QUERIES[0]["name"]) == 2
    assert {"query": system["id"]} not in veza.reports[0]["queries"]


def test_oaaclient_build_report_quirks(client, veza):
    """oaaclient 1.2.0: the description becomes the name, and queries added later never join an existing report."""
    oaautils.build_report(client, report_definition(QUERIES[:-1]))
    assert veza.reports[0]["description"] == REPORT_NAME
    oaautils.build_report(client, report_definition())
    assert QUERIES[-1]["name"] in veza.query_names(), "the new query is created"
    assert QUERIES[-1]["name"] not in veza.report_queries(REPORT_NAME), "but not added to the report"


# --- User-Agent ----------------------------------------------------------------------------------

def test_user_agents_are_recorded_and_update_user_agent_appends(client, veza):
    default = veza.user_agents[-1]
    assert default.startswith(f"oaaclient/{oaaclient.client.OAACLIENT_VERSION} python/")
    client.update_user_agent("veza_openai/9.9")
    client.get_queries()
    assert veza.user_agents[-1] == f"{default} veza_openai/9.9"
    assert len(veza.user_agents) == len(veza.requests)


# --- push_then ------------------------------------------------------------------------------------

def _source(client) -> tuple[str, str]:
    provider = client.create_provider("OpenAI", "application")
    source = client.create_data_source("org-1", provider["id"])
    return provider["id"], source["id"]


@pytest.mark.parametrize(("mode", "error", "status"), [
    ("reset", OAAConnectionError, None),
    ("502", OAAResponseError, 502),
    ("nonjson", OAAClientError, 200),
])
@pytest.mark.parametrize("multipart", [False, True])
def test_push_then_misbehaves_after_the_payload_is_stored(client, veza, mode, error, status, multipart):
    provider_id, source_id = _source(client)
    veza.push_then = mode
    with pytest.raises(error) as failed:
        if multipart:
            client.datasource_push_parts(provider_id, source_id, PAYLOAD, part_size=16)
        else:
            client.datasource_push(provider_id, source_id, PAYLOAD)
    assert type(failed.value) is error
    assert failed.value.status_code == status
    assert veza.payloads == [json.loads(PAYLOAD)], "Veza has the payload although the client saw a failure"
    assert veza.pushes[0]["data_source_id"] == source_id


def test_push_then_drip_outlasts_oaaclients_timeout_without_tripping_it(veza, ca, monkeypatch):
    """OAA_API_TIMEOUT is requests' per-read timeout: a body trickling in under it is waited for, however long."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca[1])
    monkeypatch.setenv("OAA_API_RETRIES", "0")
    monkeypatch.setenv("OAA_API_TIMEOUT", "1")
    client = OAAClient(url=veza.url, api_key=VEZA_SECRET)
    provider_id, source_id = _source(client)
    veza.push_then, veza.drip_interval = "drip", 0.03
    started = time.monotonic()
    answer = client.datasource_push(provider_id, source_id, PAYLOAD)
    elapsed = time.monotonic() - started
    assert answer["id"] == source_id and len(veza.payloads) == 1
    assert elapsed > 1.5, f"{elapsed:.1f}s: the whole answer took longer than the 1 s timeout"


# --- team keys ------------------------------------------------------------------------------------

def test_a_team_key_cannot_create_providers_or_data_sources(client, veza):
    veza.team_key = True
    assert client.get_provider("OpenAI") is None
    with pytest.raises(OAAResponseError) as refused:
        client.create_provider("OpenAI", "application")
    assert refused.value.status_code == 403 and veza.providers == []
    provider, _ = veza.precreate("OpenAI")
    with pytest.raises(OAAResponseError) as refused:
        client.create_data_source("org-1", provider["id"])
    assert refused.value.status_code == 403


def test_a_team_key_pushes_to_a_precreated_provider_and_data_source(client, veza):
    veza.team_key = True
    provider, source = veza.precreate("OpenAI", "org-1")
    assert veza.precreate("OpenAI", "org-1") == (provider, source), "precreate is idempotent"
    found = client.get_provider("OpenAI")
    found_source = client.get_data_source("org-1", found["id"])
    assert (found["id"], found_source["id"]) == (provider["id"], source["id"])
    client.datasource_push(found["id"], found_source["id"], PAYLOAD)
    assert veza.payloads == [json.loads(PAYLOAD)]


# --- knobs for hostile answers -------------------------------------------------------------------

def veza_session(ca) -> requests.Session:
    """A session trusting the fake's CA (also when REQUESTS_CA_BUNDLE, which would win over session.verify, is set)."""
    session = requests.Session()
    session.trust_env = False
    session.verify, session.headers["Authorization"] = ca[1], f"Bearer {VEZA_SECRET}"
    return session


def test_push_answers_are_taken_in_order_then_pushes_are_answered_as_usual(veza, ca):
    session = veza_session(ca)
    provider, source = veza.precreate("OpenAI", "OpenAI - org-1")
    push = f"{veza.url}/api/v1/providers/custom/{provider['id']}/datasources/{source['id']}:push"
    body = {"id": provider["id"], "data_source_id": source["id"], "json_data": PAYLOAD, "compression_type": "NONE"}
    veza.push_answers += [PushAnswer(307, headers={"Location": "https://elsewhere.example/push"}),
                          PushAnswer(200, body={"warnings": "abc"}, store=True),
                          PushAnswer(502, headers={"Content-Type": "text/html"}, body=GATEWAY_PAGE)]
    redirected = session.post(push, json=body, allow_redirects=False)
    assert redirected.status_code == 307 and redirected.headers["Location"] == "https://elsewhere.example/push"
    assert veza.pushes == []
    odd = session.post(push, json=body)
    assert odd.status_code == 200 and odd.json() == {"warnings": "abc"} and veza.payloads == [json.loads(PAYLOAD)]
    gateway = session.post(push, json=body)
    assert gateway.status_code == 502 and gateway.content == GATEWAY_PAGE
    assert gateway.headers["Content-Type"] == "text/html" and len(veza.pushes) == 1
    usual = session.post(push, json=body)
    assert usual.json() == {"id": source["id"], "warnings": []} and len(veza.pushes) == 2
    assert veza.authorizations == [f"Bearer {VEZA_SECRET}"] * 4


def test_resets_answer_with_bodies_and_endless_lookups(veza, ca):
    session = veza_session(ca)
    templates = f"{veza.url}/api/v1/providers/custom/templates"
    veza.resets[("GET", "/api/v1/providers/custom/templates")] = 1
    with pytest.raises(requests.ConnectionError):
        session.get(templates)
    assert session.get(templates).json()["values"]  # only the first was reset
    veza.answer_with[("GET", "/api/v1/providers/custom/templates")] = (200, {}, HTML_PAGE)
    page = session.get(templates)
    assert page.content == HTML_PAGE and page.headers["Content-Type"] == "text/html"

    provider, _ = veza.precreate("OpenAI")
    veza.endless_providers, veza.endless_data_sources = 2, 0
    tokens = set()
    for url in [f"{veza.url}/api/v1/providers/custom"] * 3:
        answer = session.get(url, params={"filter": 'name eq "OpenAI"'}).json()
        assert answer["has_more"] is True and len(answer["values"]) == 2
        assert not any(value["name"] == "OpenAI" for value in answer["values"])
        tokens.add(answer["next_page_token"])
    sources = session.get(f"{veza.url}/api/v1/providers/custom/{provider['id']}/datasources").json()
    assert sources["values"] == [] and sources["has_more"] is True and sources["next_page_token"] not in tokens
    assert len(tokens) == 3
