"""The access-review report in Veza: created once, kept as sent, and never able to undo a completed push."""

from __future__ import annotations

import json
import re

from conftest import NO_ROLE_READS, application, summary_line

import veza_openai as vo


def test_dry_run_with_create_report_makes_no_veza_call_and_exits_0(openai_fake, run_connector, veza):
    """--create-report with --dry-run: nothing is pushed, so no report either, and Veza is never contacted."""
    result = run_connector(*NO_ROLE_READS, "--dry-run", "--create-report", drop=("VEZA_URL", "VEZA_API_KEY"))
    assert result.returncode == 0, result.output
    assert veza.requests == []
    assert "outcome=dry-run" in summary_line(result.stderr) and "report=" not in summary_line(result.stderr)
    assert len(result.saved_json()) == 1


def test_a_report_that_fails_unexpectedly_after_a_confirmed_push_keeps_exit_0_and_outcome_pushed(
        openai_fake, run_connector, veza, monkeypatch):
    """README (The Veza report): 'A report Veza refuses is logged as an error (report=failed) and does not undo
    the push: the exit status stays 0.' That holds for any failure of the report, not only an HTTP error: an
    unexpected Veza answer (a query without an `id`, a non-list `queries`) must not turn a push Veza has
    confirmed into exit 1 and 'outcome unknown'."""
    def odd_answer(client):
        raise KeyError("id")  # what `query["id"]` raises on a saved query Veza returns without an id

    monkeypatch.setattr(vo, "create_or_update_report", odd_answer)
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert len(veza.payloads) == 1
    assert result.returncode == 0, result.output
    assert "outcome=pushed" in summary_line(result.stderr) and "report=failed" in summary_line(result.stderr)


def test_create_report_makes_the_access_review_report_once(run_connector, veza):
    first = run_connector(*NO_ROLE_READS, "--create-report")
    assert first.returncode == 0, first.output
    assert [r["name"] for r in veza.reports] == ["OpenAI access review"]
    names = [q["name"] for q in vo.REPORT_QUERIES]
    assert veza.report_queries("OpenAI access review") == names
    assert "OpenAI organization owners" in names and "OpenAI pending invites" in names
    assert re.search(r"summary: outcome=pushed .* report=created version=", first.stderr.splitlines()[-1])

    queries_before, requests_before = list(veza.queries), len(veza.requests)
    second = run_connector(*NO_ROLE_READS, env={"VEZA_CREATE_REPORT": "true"})
    assert second.returncode == 0
    assert veza.queries == queries_before and len(veza.reports) == 1  # nothing new
    writes = [(method, path) for method, path in veza.requests[requests_before:]
              if method != "GET" and "assessments" in path]
    assert writes == []
    assert "report=unchanged" in second.stderr.splitlines()[-1]


def test_create_report_restores_a_query_removed_from_the_report(run_connector, veza):
    assert run_connector(*NO_ROLE_READS, "--create-report").returncode == 0
    report = veza.reports[0]
    report["queries"] = report["queries"][1:]
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert "report=updated" in result.stderr.splitlines()[-1]
    assert veza.report_queries("OpenAI access review")[-1] == vo.REPORT_QUERIES[0]["name"]


def test_report_queries_name_the_node_types_and_properties_the_payload_has(run_connector, veza):
    assert run_connector("--create-report").returncode == 0
    payload = veza.payloads[0]
    app = application(payload)
    user_properties = set(payload["custom_property_definition"]["applications"][0]["local_user_properties"])
    roles = {role["name"] for role in app["local_roles"]}
    for query in vo.REPORT_QUERIES:
        for node in query["source_node_types"]["nodes"]:
            assert node["node_type"].startswith("OAA.OpenAI.")
            for spec in node.get("condition_expression", {}).get("specs", []):
                name = spec["property"].removeprefix("customprop_")
                if spec["property"].startswith("customprop_") and node["node_type"] == "OAA.OpenAI.User":
                    assert name in user_properties, name
    assert "Admin API Key" in roles


def test_a_report_veza_refuses_is_an_error_line_but_the_push_stands(run_connector, veza, monkeypatch):
    def refuse(client):
        raise vo.VezaError("HTTP 400: InvalidArgument: bad query", 400)
    monkeypatch.setattr(vo, "create_or_update_report", refuse)
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert result.returncode == 0 and len(veza.pushes) == 1
    assert "Veza report 'OpenAI access review' not created or updated: HTTP 400: InvalidArgument: bad query" in \
        result.stderr
    assert "report=failed" in result.stderr.splitlines()[-1]


def test_report_queries_use_relates_to_exp_and_no_deprecated_fields():
    text = json.dumps(vo.REPORT_QUERIES)
    assert "destination_node_types" not in text and "raw_permissions" not in text
    owners = next(q for q in vo.REPORT_QUERIES if q["name"] == "OpenAI organization owners")
    [spec] = owners["relates_to_exp"]["specs"]
    [node] = spec["node_types"]["nodes"]
    assert node["node_type"] == "OAA.OpenAI.Role"
    assert node["condition_expression"]["specs"] == [{"fn": "EQ", "property": "name", "value": "Owner"}]


def test_a_veza_that_stores_queries_with_its_own_fields_and_integer_enums_leaves_the_report_unchanged(
        run_connector, veza):
    veza.rich_queries = True
    first = run_connector(*NO_ROLE_READS, "--create-report")
    assert "report=created" in summary_line(first.stderr), first.output
    before = len(veza.requests)
    second = run_connector(*NO_ROLE_READS, "--create-report")
    assert "report=unchanged" in summary_line(second.stderr), second.output
    assert [r for r in veza.requests[before:] if r[0] in ("PUT", "POST") and "assessments" in r[1]] == []


def test_a_query_changed_in_veza_is_put_back(run_connector, veza):
    veza.rich_queries = True
    assert run_connector(*NO_ROLE_READS, "--create-report").returncode == 0
    owners = next(q for q in veza.queries if q["name"] == "OpenAI organization owners")
    owners["relates_to_exp"]["specs"][0]["node_types"]["nodes"][0]["condition_expression"]["specs"][0]["value"] = \
        "Reader"
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert "report=updated" in summary_line(result.stderr), result.output
    assert ("PUT", f"/api/v1/assessments/queries/{owners['id']}") in veza.requests
    assert owners["relates_to_exp"] == next(q for q in vo.REPORT_QUERIES
                                            if q["name"] == owners["name"])["relates_to_exp"]


def test_same_as_sent_compares_only_what_was_sent_normalised():
    sent = {"query_type": "SOURCE_TO_DESTINATION", "flag": False, "nodes": [{"node_type": "A", "v": True}]}
    assert vo.same_as_sent({"query_type": 1, "nodes": [{"node_type": "A", "v": True, "extra": 1}], "id": "x"},
                            sent)
    assert not vo.same_as_sent({"query_type": 1, "nodes": [{"node_type": "B", "v": True}]}, sent)
    assert not vo.same_as_sent({"query_type": 1, "flag": True, "nodes": [{"node_type": "A", "v": True}]}, sent)
    assert not vo.same_as_sent({"query_type": 1, "nodes": [{"node_type": "A"}]}, sent)  # true is not a default
    assert not vo.same_as_sent({"query_type": "1", "nodes": [{"node_type": "A", "v": True}]}, sent)
