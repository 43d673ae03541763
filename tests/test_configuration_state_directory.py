"""The state directory's settings: --state-dir / OPENAI_STATE_DIR, --max-age; a directory that cannot be written or
that others can write is a configuration error (exit 2) naming it, before any request."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import NO_ROLE_READS, SCRIPT, Run, clean_environment, summary_line
from state_dir import list_files

import veza_openai as vo

ENV = {"VEZA_URL": "veza.example.com", "VEZA_API_KEY": "veza-key-123456", "OPENAI_ORG_ID": "org-abc",
       "OPENAI_API_KEY": "sk-admin-unit-123456"}
DAY = 86_400


def option(flag: str):
    found = [o for o in vo.OPTIONS if flag in o.flags]
    assert found, f"no option {flag}"
    return found[0]


def problems(argv: list[str]) -> list[str]:
    try:
        vo.load_config(argv, ENV)
    except vo.ConfigError as exc:
        return exc.problems
    return []


def assert_refused_before_any_request(result, openai_fake, veza, path) -> list[str]:
    assert result.returncode == 2, result.output
    assert "outcome=config-error" in summary_line(result.stderr)
    errors = [line for line in result.stderr.splitlines() if "configuration error" in line and str(path) in line]
    assert errors, result.stderr
    assert openai_fake.calls() == 0 and veza.requests == []
    return errors


def test_the_state_settings_have_their_flags_and_variables():
    """--state-dir and --max-age also come from the environment (a CronJob sets variables); the two report
    files are flags only."""
    assert option("--state-dir").env == "OPENAI_STATE_DIR"
    assert option("--max-age").env == "OPENAI_MAX_AGE"
    option("--changes-json")
    option("--previous")


def test_max_age_is_a_day_unless_set_and_between_a_minute_and_thirty_days():
    """The oldest a kept list may be for a push to use it: a day by default, 60 s to 30 days."""
    assert getattr(vo.load_config([], ENV), option("--max-age").dest) == DAY
    assert problems(["--max-age", "60"]) == [] and problems(["--max-age", str(30 * DAY)]) == []
    assert problems(["--max-age", "59"]) and problems(["--max-age", str(30 * DAY + 1)])


def test_the_state_directory_can_come_from_the_environment(run_connector, small_openai, tmp_path):
    """OPENAI_STATE_DIR alone turns the state on: the directory is created and the lists and the push saved."""
    state = tmp_path / "from-env"
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.output
    assert list_files(state) and (state / "pushed.json").is_file()


@pytest.mark.parametrize("mode", [0o777, 0o770], ids=["others can write", "its group can write"])
def test_a_state_directory_others_can_write_is_a_configuration_error(run_connector, openai_fake, veza, tmp_path,
                                                                      mode):
    """Anyone who can write the state could plant lists for the next push: refused, saying how to fix it."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    errors = assert_refused_before_any_request(result, openai_fake, veza, state)
    assert any("chmod 700" in line for line in errors), errors


def test_a_state_directory_of_another_owner_is_a_configuration_error(tmp_path, monkeypatch):
    """Run as root, a directory owned by another user is writable by both: its owner could plant lists. The run's
    user must own it (the run is made to look like another user's here)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert problems(["--state-dir", str(state)]) == []
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(state).st_uid + 1)
    [problem] = problems(["--state-dir", str(state)])
    assert str(state) in problem and f"belongs to uid {os.stat(state).st_uid}" in problem, problem


def test_a_state_directory_path_that_is_a_file_is_a_configuration_error(run_connector, openai_fake, veza, tmp_path):
    """A path that exists and is not a directory: exit 2 naming it, no request."""
    state = tmp_path / "state"
    state.write_text("not a directory")
    result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
    assert_refused_before_any_request(result, openai_fake, veza, state)


def test_a_state_directory_that_cannot_be_written_is_a_configuration_error(run_connector, ca, openai_fake, veza,
                                                                           tmp_path):
    """Mode 0500 for a user; root writes whatever the mode, so as root the directory is a read-only mount of its
    own (a mount namespace: the connector then runs in a process)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if os.geteuid() != 0:
        state.chmod(0o500)
        result = run_connector(*NO_ROLE_READS, "--state-dir", str(state))
        assert_refused_before_any_request(result, openai_fake, veza, state)
        return
    read_only = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$1" "$1" && shift && exec "$@"', "sh",
                 str(state)]
    probe = subprocess.run([*read_only, "sh", "-c", 'test ! -w "$0"', str(state)], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"running as root and no read-only bind mount is permitted here: {probe.stderr.decode().strip()}")
    done = subprocess.run([*read_only, sys.executable, str(SCRIPT), *NO_ROLE_READS, "--state-dir", str(state)],
                          env=clean_environment(tmp_path, ca, openai_fake, veza, None, ()), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_refused_before_any_request(Run(done.returncode, done.stdout, done.stderr, tmp_path), openai_fake, veza,
                                      state)


def test_the_saved_payload_the_previous_payload_and_the_changes_file_must_be_three_files(tmp_path):
    """--save-json is written before the change report reads --previous: one file for both would compare a push
    with itself and report nothing. The same file twice, by any path, is a configuration error naming the three."""
    saved = tmp_path / "payload.json"
    saved.write_text("{}")
    (tmp_path / "link.json").symlink_to(saved)
    for argv in (["--save-json", str(saved), "--previous", str(saved)],
                 ["--save-json", str(saved), "--previous", str(tmp_path / "link.json")],
                 ["--previous", str(saved), "--changes-json", str(saved)],
                 ["--save-json", str(saved), "--changes-json", str(saved)]):
        assert problems(argv) == ["--save-json, --previous and --changes-json must name different files"], argv
    assert problems(["--save-json", str(tmp_path / "new.json"), "--previous", str(saved),
                     "--changes-json", str(tmp_path / "changes.json")]) == []


def test_a_changes_file_in_a_missing_directory_is_a_configuration_error(tmp_path):
    """Found before any request, not after the push."""
    missing = tmp_path / "no" / "changes.json"
    assert problems(["--changes-json", str(missing)]) == [f"--changes-json directory {str(missing.parent)!r} does "
                                                          "not exist"]
    assert problems(["--changes-json", str(tmp_path / "changes.json")]) == []
