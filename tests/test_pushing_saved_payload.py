"""The payload on disk (--save-json) and dry runs."""

from __future__ import annotations

import os
import re

from conftest import (
    NO_ROLE_READS,
    application,
    load,
)

import veza_openai

NOTHING_PUSHED = "nothing was pushed"


class FullDiskOs:
    """veza_openai's `os`, except that the payload file it opens is /dev/full (ENOSPC on write)."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd: int, *args, **kwargs):
        os.close(fd)
        return open("/dev/full", *args, **kwargs)  # noqa: SIM115 (the caller closes it)


def test_save_json_writes_exactly_the_pushed_payload(run_connector, veza, tmp_path):
    result = run_connector(*NO_ROLE_READS, "--save_json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.output
    assert load(tmp_path / "out.json") == veza.payloads[0]
    assert f"payload saved to {tmp_path / 'out.json'}" in result.stderr


def test_save_json_without_a_path_writes_into_the_working_directory(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, "--save-json")
    assert result.returncode == 0
    [saved] = result.saved_json()
    assert saved.name.startswith("openai-org-demo0001-") and load(saved) == veza.payloads[0]


def test_dry_run_needs_no_veza_settings_and_pushes_nothing(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, "--dry-run", drop=("VEZA_URL", "VEZA_API_KEY"))
    assert result.returncode == 0, result.output
    assert veza.requests == []
    [saved] = result.saved_json()
    assert len(application(load(saved))["local_users"]) > 120
    assert "outcome=dry-run" in result.stderr


def test_a_full_disk_when_saving_fails_the_run_before_the_push(run_connector, veza, tmp_path, monkeypatch):
    monkeypatch.setattr(veza_openai, "os", FullDiskOs())
    target = tmp_path / "out" / "payload.json"
    target.parent.mkdir()
    result = run_connector(*NO_ROLE_READS, "--save_json", str(target))
    assert result.returncode == 1, result.output
    assert re.search(r"ERROR could not write the payload to .*payload\.json: No space left on device \(full disk\?\)",
                     result.stderr), result.stderr
    assert NOTHING_PUSHED in result.stderr
    assert veza.pushes == []
    assert list(target.parent.iterdir()) == []  # no half-written file, no temporary left behind
