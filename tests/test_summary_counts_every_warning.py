"""The summary line: `warnings=` counts every warning line the run logged, and `left_out=` names refused families,
so an alert on either never misses a refused family."""

from __future__ import annotations

import json

from conftest import NO_ROLE_READS


def test_warnings_counts_every_warning_line_and_left_out_names_the_refused_families(run_connector, openai_fake):
    openai_fake.refused["groups"] = 403
    openai_fake.refused["admin API keys"] = 403
    result = run_connector(*NO_ROLE_READS, "--dry-run", "--log-format", "json")
    assert result.returncode == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    warning_lines = [entry for entry in entries if entry["level"] == "WARNING"]
    assert sum("left out" in entry["message"] for entry in warning_lines) == 2
    summary = entries[-1]
    assert summary["summary"] is True
    assert summary["warnings"] == len(warning_lines)
    assert summary["left_out"] == "admin_api_keys,groups"


def test_left_out_is_empty_when_every_family_was_read(run_connector):
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 0, result.output
    summary = result.stderr.splitlines()[-1]
    assert " left_out= " in summary
    assert f"warnings={result.stderr.count(' WARNING ')} " in summary
