"""What Veza answers is read as a real Veza answers: its certificate, the queries it stores."""

from __future__ import annotations

import json

from conftest import NO_ROLE_READS

import veza_openai as vo

REPORT = "OpenAI access review"


def summary_line(stderr: str) -> str:
    return stderr.splitlines()[-1]


def test_a_veza_certificate_that_cannot_be_verified_is_named_with_requests_ca_bundle(run_connector, openai_fake,
                                                                                     veza):
    result = run_connector(*NO_ROLE_READS, drop=("REQUESTS_CA_BUNDLE",))  # the fake's CA is not trusted
    assert result.returncode == 1, result.output
    assert f"cannot use Veza at {veza.url}: its TLS certificate could not be verified. If a TLS-inspecting proxy " \
           "or a private CA signs it, set REQUESTS_CA_BUNDLE to that CA's certificate file (PEM)" in result.stderr
    assert "not reachable" not in result.stderr
    assert openai_fake.calls() == 0 and veza.pushes == []


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
    assert vo._same_as_sent({"query_type": 1, "nodes": [{"node_type": "A", "v": True, "extra": 1}], "id": "x"},
                            sent)
    assert not vo._same_as_sent({"query_type": 1, "nodes": [{"node_type": "B", "v": True}]}, sent)
    assert not vo._same_as_sent({"query_type": 1, "flag": True, "nodes": [{"node_type": "A", "v": True}]}, sent)
    assert not vo._same_as_sent({"query_type": 1, "nodes": [{"node_type": "A"}]}, sent)  # true is not a default
    assert not vo._same_as_sent({"query_type": "1", "nodes": [{"node_type": "A", "v": True}]}, sent)
