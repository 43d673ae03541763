"""The payload on disk (--save-json) and dry runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from conftest import (
    NO_ROLE_READS,
    ROOT,
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


def test_the_human_summary_does_not_say_saved_when_saving_failed(run_connector, veza, tmp_path, monkeypatch):
    monkeypatch.setattr(veza_openai, "os", FullDiskOs())
    result = run_connector(*NO_ROLE_READS, "--save_json", str(tmp_path / "payload.json"))
    assert result.returncode == 1, result.output
    [payload_line] = [line for line in result.stderr.splitlines() if "Payload:" in line]
    assert "not pushed" in payload_line and "saved to" not in payload_line, payload_line


def test_a_payload_saved_in_the_checkout_is_git_ignored(run_connector, tmp_path):
    """A saved payload holds every user's email: saved in the checkout under its default name
    (openai-<org id>-<UTC time>.json, in the working directory), `git add .` must not pick it up.
    Checked with git itself against a copy of the repository's .gitignore, with no user or system git config."""
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 0, result.output
    [saved] = result.saved_json()
    repository = tmp_path / "checkout"
    repository.mkdir()
    shutil.copy(ROOT / ".gitignore", repository / ".gitignore")
    git_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "init", "-q"], cwd=repository, env=git_env, check=True)
    names = [saved.name, f"tests/{saved.name}", "openai-org-demo0001-20261130-235959.json"]
    checked = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=repository, env=git_env,
                             capture_output=True, text=True)
    assert checked.stdout.split() == names, f"not ignored: {sorted(set(names) - set(checked.stdout.split()))}"
    # and no file the repository tracks is ignored by it
    tracked = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-from=.gitignore"], cwd=ROOT,
                             env=git_env, capture_output=True, text=True, check=True)
    assert tracked.stdout == ""


def test_a_failed_dry_run_says_nothing_about_veza_keeping_a_snapshot(run_connector, veza, openai_fake):
    """A dry run pushes nothing whatever happens: its failure says what failed, never "Veza keeps the previous
    snapshot" (it may say that nothing was pushed because it was a dry run)."""
    openai_fake.refused["users"] = 403
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 1, result.output
    assert "outcome=failed" in result.stderr.splitlines()[-1]
    assert "Veza keeps" not in result.stderr
    assert veza.requests == []
