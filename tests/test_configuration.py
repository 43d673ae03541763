"""Configuration: flags and variables from one table, secrets that never echo, errors that name what to fix."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET

import veza_openai as vo

ENV = {"VEZA_URL": "veza.example.com", "VEZA_API_KEY": "veza-key-123456", "OPENAI_ORG_ID": "org-abc",
       "OPENAI_API_KEY": "sk-admin-unit-123456"}
ADMIN_KEY_LOOKALIKE = "sk-admin-PASTED-by-mistake-0123456789"


def config_problems(argv: list[str], env: dict[str, str]) -> list[str]:
    with pytest.raises(vo.ConfigError) as caught:
        vo.load_config(argv, env)
    return caught.value.problems


# --- one table -----------------------------------------------------------------------------------

def test_every_option_in_the_table_is_in_help_with_its_variable_and_default():
    text = re.sub(r"\s+", " ", vo.build_arg_parser().format_help())
    for option in vo.OPTIONS:
        if not option.flags:
            continue
        assert all(flag in text for flag in option.flags), option.dest
        assert f"env: {option.env or 'none'}" in text, option.dest


@pytest.mark.parametrize("option", [o for o in vo.OPTIONS if o.kind is not None and o.env], ids=lambda o: o.dest)
def test_every_number_is_checked_against_its_bounds_from_flag_and_variable(option):
    too_big = str(option.high * 10 + 1)
    from_env = config_problems([], {**ENV, option.env: too_big})
    assert f"{option.label} must be between {option.low:g} and {option.high:g}" in from_env
    if option.flags:
        from_flag = config_problems([option.flags[0], too_big], ENV)
        assert from_env == from_flag
    assert config_problems([], {**ENV, option.env: "many"}) == [f"{option.label} must be a number, got 'many'"]


def test_a_word_setting_is_one_of_its_choices_whatever_its_case():
    assert vo.load_config(["--role-assignments", "ALL"], ENV).role_assignments == "all"
    assert config_problems([], {**ENV, "LOG_FORMAT": "xml"}) == ["--log-format (env LOG_FORMAT) must be text or json"]


def test_a_value_docker_env_file_kept_quoted_is_unquoted_with_a_warning():
    config = vo.load_config([], {**ENV, "OPENAI_API_KEY": '"sk-admin-unit-123456"', "VEZA_URL": "'veza.example.com'"})
    assert config.openai_api_key == "sk-admin-unit-123456" and config.veza_url == "https://veza.example.com"
    assert len(config.notes) == 2 and all("wrapped in quotes" in note for note in config.notes)
    assert "sk-admin-unit" not in " ".join(config.notes)


@pytest.mark.parametrize(("key", "kind"), [("sk-proj-abcdefghijklmnopqrstuvwxyz", "a project key"),
                                           ("sk-svcacct-abcdefghijklmnopqrstuvwxyz", "a service account key")])
def test_a_key_that_is_certainly_not_an_admin_key_is_a_configuration_error(run_connector, veza, openai_fake, key,
                                                                            kind):
    result = run_connector(env={"OPENAI_ADMIN_KEY": key})
    assert result.returncode == 2, result.output
    assert f"configuration error: OPENAI_ADMIN_KEY holds {kind}" in result.stderr
    assert "sk-admin-" in result.stderr and "abcdefghijklmnop" not in result.output
    assert openai_fake.calls() == 0 and veza.requests == []


# --- secrets never echoed --------------------------------------------------------------------------

@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_key_put_in_a_file_variable_is_never_printed(run_connector, openai_fake, log_format):
    result = run_connector("--log-format", log_format, env={"OPENAI_API_KEY_FILE": ADMIN_KEY_LOOKALIKE},
                           drop=("OPENAI_API_KEY",))
    assert result.returncode == 2, result.output
    assert "PASTED-by-mistake" not in result.output
    assert "OPENAI_API_KEY_FILE holds what looks like an API key, not a file path" in result.stderr
    assert openai_fake.calls() == 0


def test_a_relative_secret_path_that_cannot_be_read_is_not_echoed(run_connector):
    result = run_connector(env={"VEZA_API_KEY_FILE": "eyJhbGciOiJIUzI1NiJ9.veza-token-value"}, drop=("VEZA_API_KEY",))
    assert result.returncode == 2, result.output
    assert "VEZA_API_KEY_FILE: cannot read the file it names (No such file or directory)" in result.stderr
    assert "veza-token-value" not in result.output


@pytest.mark.parametrize("args", [(ADMIN_KEY_LOOKALIKE,), ("--openai-api-key", ADMIN_KEY_LOOKALIKE),
                                  (f"--openai-api-key={ADMIN_KEY_LOOKALIKE}",), ("--veza-api-key", "veza-PASTED-42")])
def test_a_key_given_on_the_command_line_is_never_echoed(run_connector, openai_fake, args):
    result = run_connector(*args)
    assert result.returncode == 2, result.output
    assert "PASTED" not in result.output
    assert "secrets are read from the environment only" in result.stderr
    assert openai_fake.calls() == 0


def test_anything_shaped_like_an_openai_key_is_masked_in_every_log_line():
    record = logging.LogRecord("veza_openai", logging.ERROR, __file__, 1, "server said: bad key %s", (
        ADMIN_KEY_LOOKALIKE,), None)
    for formatter in (vo.RedactingFormatter("%(message)s", []), vo.JsonFormatter([])):
        line = formatter.format(record)
        assert "PASTED-by-mistake" not in line and "sk-admin-...6789" in line


def test_a_fifo_as_a_secret_file_is_refused_at_once_with_exit_2(run_connector, tmp_path, openai_fake):
    fifo = tmp_path / "openai-key"
    os.mkfifo(fifo)
    result = run_connector(env={"OPENAI_API_KEY_FILE": str(fifo)}, drop=("OPENAI_API_KEY",), timeout=20)
    assert result.returncode == 2, result.output
    assert f"OPENAI_API_KEY_FILE: '{fifo}' is not a regular file" in result.stderr
    assert openai_fake.calls() == 0


def test_a_directory_as_a_secret_file_is_refused_with_exit_2(run_connector, tmp_path):
    result = run_connector(env={"VEZA_API_KEY_FILE": str(tmp_path)}, drop=("VEZA_API_KEY",))
    assert result.returncode == 2, result.output
    assert "VEZA_API_KEY_FILE" in result.stderr and VEZA_SECRET not in result.output


# --- JSON logs stay JSON -----------------------------------------------------------------------------

def json_lines(text: str) -> list[dict]:
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return entries


def test_an_abbreviated_log_format_flag_still_gives_json_configuration_errors(run_connector):
    result = run_connector("--log-f", "json", env={"OPENAI_ORG_ID": "acme"})
    assert result.returncode == 2, result.output
    entries = json_lines(result.stderr)
    assert entries[-1]["outcome"] == "config-error"
    assert any("OPENAI_ORG_ID" in entry["message"] for entry in entries)


def test_unverified_veza_tls_logs_one_json_warning_not_urllib3_text(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, "--log-format", "json",
                           env={"VEZA_UNSAFE_HTTPS": "true", "REQUESTS_CA_BUNDLE": ""})
    assert result.returncode == 0, result.output
    entries = json_lines(result.stderr)
    assert [e["level"] for e in entries if "VEZA_UNSAFE_HTTPS" in e["message"]] == ["WARNING"]
    assert "InsecureRequestWarning" not in result.output
    assert OPENAI_SECRET not in result.output


def test_a_quoted_key_from_an_env_file_still_pushes_and_its_warning_is_counted(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY": f'"{OPENAI_SECRET}"'})
    assert result.returncode == 0, result.output
    assert "configuration: OPENAI_API_KEY is wrapped in quotes" in result.stderr
    warning_lines = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert f" warnings={len(warning_lines)} " in result.stderr.splitlines()[-1]
    assert OPENAI_SECRET not in result.output
