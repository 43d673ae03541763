"""Settings: flags and variables, which wins, their bounds and checks; a bad setting is exit 2 before any request."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, summary_line

import veza_openai as vo

ENV = {"VEZA_URL": "veza.example.com", "VEZA_API_KEY": "veza-key-123456", "OPENAI_ORG_ID": "org-abc",
       "OPENAI_API_KEY": "sk-admin-unit-123456"}


def config_problems(argv: list[str], env: dict[str, str]) -> list[str]:
    with pytest.raises(vo.ConfigError) as caught:
        vo.load_config(argv, env)
    return caught.value.problems


def json_lines(text: str) -> list[dict]:
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return entries


def test_every_option_in_the_table_is_in_help_with_its_variable_and_default():
    text = re.sub(r"\s+", " ", vo.build_arg_parser().format_help())
    for option in vo.OPTIONS:
        if not option.flags:
            continue
        assert all(flag in text for flag in option.flags), option.dest
        assert f"env: {option.env or 'none'}" in text, option.dest


@pytest.mark.parametrize("option", [o for o in vo.OPTIONS if o.kind in (int, float) and o.env], ids=lambda o: o.dest)
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


def test_config_takes_env_and_lets_flags_win():
    config = vo.load_config(["--openai_org", "org-flag"], ENV)
    assert config.org_id == "org-flag" and config.veza_url == "https://veza.example.com"
    assert config.data_source_name == "OpenAI - org-flag"
    assert config.openai_base_url == "https://api.openai.com/v1"
    assert (config.max_workers, config.role_assignments, config.dry_run) == (8, "auto", False)


def test_config_falls_back_to_openai_admin_key():
    env = {k: v for k, v in ENV.items() if k != "OPENAI_API_KEY"} | {"OPENAI_ADMIN_KEY": "sk-admin-fallback-1"}
    assert vo.load_config([], env).openai_api_key == "sk-admin-fallback-1"


def test_config_reports_every_problem_at_once():
    with pytest.raises(vo.ConfigError) as caught:
        vo.load_config(["--max-workers", "x", "--timeout", "-1"], {"OPENAI_BASE_URL": "ftp://x"})
    problems = caught.value.problems
    assert len(problems) == 7, problems
    assert any(p.startswith("OPENAI_API_KEY (or OPENAI_ADMIN_KEY") and "is not set" in p for p in problems)


def test_dry_run_needs_no_veza_settings(tmp_path):
    env = {"OPENAI_ORG_ID": "org-abc", "OPENAI_API_KEY": "sk-admin-unit-123456"}
    config = vo.load_config(["--dry-run", "--save_json", str(tmp_path / "x.json")], env)
    assert config.veza_url is None and config.save_json_path == str(tmp_path / "x.json")


def test_http_base_url_is_allowed_only_for_loopback():
    assert vo.load_config(["--openai-base-url", "http://127.0.0.1:8080/v1/"], ENV).openai_base_url == \
        "http://127.0.0.1:8080/v1"
    with pytest.raises(vo.ConfigError):
        vo.load_config(["--openai-base-url", "http://10.0.0.1/v1"], ENV)


def test_flags_win_over_environment_variables(run_connector, veza, openai_fake):
    result = run_connector(*NO_ROLE_READS, "--veza-url", veza.url, "--openai_org", "org-demo0001",
                           env={"VEZA_URL": "https://veza.invalid", "OPENAI_ORG_ID": "org-other"})
    assert result.returncode == 0, result.output
    assert veza.data_source_names() == ["OpenAI - org-demo0001"]


def test_openai_admin_key_is_used_when_openai_api_key_is_unset(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_ADMIN_KEY": OPENAI_SECRET}, drop=("OPENAI_API_KEY",))
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1


def test_help_names_each_flags_environment_variable(run_connector):
    result = run_connector("--help")
    assert result.returncode == 0
    for name in ("VEZA_URL", "OPENAI_ORG_ID", "OPENAI_BASE_URL", "OPENAI_MAX_WORKERS", "OPENAI_ROLE_ASSIGNMENTS",
                 "VEZA_API_KEY", "OPENAI_API_KEY"):
        assert name in result.stdout
    for flag in ("--veza_url", "--veza-url", "--openai-org", "--openai_org", "--save_json", "--save-json",
                 "--debug", "--dry-run"):
        assert flag in result.stdout


def test_all_missing_settings_are_reported_together_with_exit_2(run_connector, veza, openai_fake):
    result = run_connector(drop=("VEZA_URL", "VEZA_API_KEY", "OPENAI_ORG_ID", "OPENAI_API_KEY"))
    assert result.returncode == 2
    for name in ("VEZA_URL", "VEZA_API_KEY", "OPENAI_ORG_ID", "OPENAI_API_KEY"):
        assert re.search(rf"configuration error: {name}\b.*is not set", result.stderr), name
    assert "Traceback" not in result.output
    assert veza.requests == [] and openai_fake.calls() == 0
    assert re.search(r"summary: outcome=config-error warnings=0 .* calls=0 retries=0", result.stderr.splitlines()[-1])


def test_malformed_settings_are_configuration_errors_before_any_request(run_connector, veza, openai_fake):
    result = run_connector(env={"OPENAI_ORG_ID": "acme", "VEZA_URL": "https://user:pw@veza.example.com",
                                "OPENAI_BASE_URL": "http://api.example.com/v1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 3, result.stderr
    assert "OPENAI_ORG_ID" in lines[0] and "org-" in lines[0]
    assert any("VEZA_URL" in line and "credentials" in line for line in lines)
    assert any("OPENAI_BASE_URL" in line and "https" in line for line in lines)
    assert veza.requests == [] and openai_fake.calls() == 0


@pytest.mark.parametrize("value", ["-1", "3651", "ninety", "1.5"])
def test_activity_days_out_of_range_is_a_configuration_error(run_connector, openai_fake, value):
    result = run_connector("--dry-run", "--activity-days", value)
    assert result.returncode == 2
    assert "--activity-days (env OPENAI_ACTIVITY_DAYS) must be" in result.stderr
    assert openai_fake.requests == []


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"OPENAI_ORG_ID": "org-abc def"}, (), "OPENAI_ORG_ID (or --openai-org) must look like org-"),
    ({"OPENAI_ORG_ID": "org-../../admin"}, (), "OPENAI_ORG_ID (or --openai-org) must look like org-"),
    ({"OPENAI_ORG_ID": ""}, (), "OPENAI_ORG_ID (or --openai-org) is not set"),
    ({"VEZA_URL": "https://admin:hunter2@veza.example.com"}, (),
     "VEZA_URL (or --veza-url) must not contain credentials"),
    ({"VEZA_URL": "http://veza.example.com"}, (), "VEZA_URL (or --veza-url) must use https"),
    ({"VEZA_URL": "https://veza.example.com:99999"}, (), "VEZA_URL (or --veza-url) is not a valid URL"),
    ({"OPENAI_BASE_URL": "http://api.example.com/v1"}, (), "OPENAI_BASE_URL (or --openai-base-url) must use https"),
    ({"OPENAI_API_KEY": "sk-admin-abc\nINJECTED"}, (), "OPENAI_API_KEY contains whitespace, a newline"),
    ({"VEZA_API_KEY": " "}, (), "VEZA_API_KEY contains whitespace"),
    ({}, ("--save-json", "/proc/veza-out"), "--save-json directory '/proc/veza-out' does not exist"),
    ({}, ("--save-json", "/proc/sys"), "--save-json directory '/proc/sys' is not writable"),
    ({}, ("--max-workers", "0"), "--max-workers (env OPENAI_MAX_WORKERS) must be between 1 and 64"),
    ({}, ("--role-assignments", "some"), "--role-assignments (env OPENAI_ROLE_ASSIGNMENTS) must be auto, all or none"),
    pytest.param({"OPENAI_ORG_ID": "org-demo0001\n"}, (), "OPENAI_ORG_ID (or --openai-org) must look like org-",
                 id="org id with a newline"),
    pytest.param({"OPENAI_API_KEY": "sk-admin-ключ-1234"}, (), "OPENAI_API_KEY contains non-ASCII characters",
                 id="non-ASCII key"),
    pytest.param({"OPENAI_API_KEY": "sk-admin-" + "k" * 102_400}, (), "OPENAI_API_KEY is 102,409 characters long",
                 id="100 KB key"),
    pytest.param({"VEZA_URL": "https://veza.example.com/app/dashboard"}, (),
                 "VEZA_URL (or --veza-url) must be the instance's address only", id="VEZA_URL of a page"),
    pytest.param({}, ("--save-json", "x" * 295 + ".json"), "--save-json file name is longer than",
                 id="300-character file name"),
])
def test_bad_settings_are_configuration_errors_that_exit_2_before_any_request(run_connector, veza, openai_fake, env,
                                                                            args, message):
    result = run_connector(*args, env=env)
    assert result.returncode == 2, result.output
    assert f"configuration error: {message}" in result.stderr
    assert veza.requests == [] and openai_fake.calls() == 0
    assert "INJECTED" not in result.output and "hunter2" not in result.output and "k" * 200 not in result.output


def test_configuration_errors_are_json_lines_when_log_format_json_is_asked(run_connector, veza, openai_fake):
    """README (Logs): '--log-format json (or LOG_FORMAT=json) writes one JSON object per line ... the summary
    line carries summary: true', a misconfigured run included: a log shipper (the README's Kubernetes CronJob
    sets LOG_FORMAT=json) must be able to parse the lines that say what is wrong."""
    result = run_connector(*NO_ROLE_READS, env={"LOG_FORMAT": "json", "OPENAI_ORG_ID": "not-an-org"})
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert entries[-1].get("summary") is True and entries[-1].get("outcome") == "config-error"


@pytest.mark.parametrize("args", [("--log-format", "xml"), ("--max-workerz", "4")], ids=["bad choice", "unknown flag"])
def test_a_flag_argparse_rejects_still_ends_with_the_config_error_summary_line(run_connector, veza, openai_fake,
                                                                               args):
    """README: 'Every run ends with one summary line, success or not ... outcome is ... config-error'. That
    includes a flag argparse itself rejects (an unknown flag, a value outside --log-format's choices): a log
    pipeline keyed on the summary line sees every run."""
    result = run_connector(*args)
    assert result.returncode == 2, result.output
    assert openai_fake.calls() == 0
    assert "summary: outcome=config-error" in summary_line(result.stderr), result.stderr


def test_an_upper_case_https_scheme_in_veza_url_is_accepted(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"VEZA_URL": veza.url.replace("https://", "HTTPS://")})
    assert result.returncode == 0, result.output
    assert len(veza.payloads) == 1


@pytest.mark.parametrize("uid", [10001, 0, 1000])
def test_an_unwritable_save_directory_names_uid_10001_only_when_running_as_it(monkeypatch, uid):
    """The image runs as uid 10001, and saying so helps there; elsewhere (root, a cron user) the message says the
    directory is not writable by the user the run has, without sending anyone looking for uid 10001."""
    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    # /proc/sys takes no new file, even from root
    [problem] = [p for p in config_problems(["--dry-run", "--save-json", "/proc/sys"], ENV) if "/proc/sys" in p]
    assert "is not writable" in problem
    if uid == 10001:
        assert "uid 10001" in problem
    else:
        assert "10001" not in problem


@pytest.mark.parametrize(("wrong", "right", "value"), [("OPENAI_ORG", "OPENAI_ORG_ID", "org-NOTSHOWN0031"),
                                                       ("VEZA_TOKEN", "VEZA_API_KEY", "veza-NOTSHOWN-token-41")])
def test_a_misspelled_variable_is_named_when_the_right_one_is_unset_never_its_value(run_connector, veza, openai_fake,
                                                                                   wrong, right, value):
    """OPENAI_ORG=org-... with OPENAI_ORG_ID unset, VEZA_TOKEN=... with VEZA_API_KEY unset: the configuration error
    for the unset variable asks "did you mean" naming the variable that is set, never printing its value."""
    result = run_connector(*NO_ROLE_READS, env={wrong: value}, drop=(right,))
    assert result.returncode == 2, result.output
    [line] = [line for line in result.stderr.splitlines() if re.search(rf"configuration error: {right}\b", line)]
    assert re.search(rf"\b{wrong}\b", line) and "did you mean" in line.lower(), line
    assert value not in result.output
    assert "summary: outcome=config-error" in summary_line(result.stderr)
    assert openai_fake.calls() == 0 and veza.requests == []


def test_a_lookalike_variable_beside_the_right_one_is_not_mentioned(run_connector, veza):
    """The "did you mean" is only for a variable whose right spelling is unset: beside it, a lookalike (another
    tool's OPENAI_ORG, say) is left alone."""
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_ORG": "org-NOTSHOWN0031", "VEZA_TOKEN": "veza-NOTSHOWN-41"})
    assert result.returncode == 0, result.output
    assert not re.search(r"\bOPENAI_ORG\b", result.output) and "VEZA_TOKEN" not in result.output
    assert "did you mean" not in result.output.lower() and "NOTSHOWN" not in result.output


@pytest.mark.parametrize(("args", "meant"), [(("--dryrun",), "--dry-run"),
                                             (("--veza-ulr", "https://veza.example.com"), "--veza-url"),
                                             (("--save-jsn",), "--save-json"),
                                             (("--max-workerz", "4"), "--max-workers")],
                         ids=lambda value: value[0] if isinstance(value, tuple) else value)
def test_a_misspelled_flag_gets_a_did_you_mean_with_exit_2(run_connector, veza, openai_fake, args, meant):
    """A flag one slip away from a real one: the configuration error names the real one (its hyphenated
    spelling), exit 2 before any request."""
    result = run_connector(*args)
    assert result.returncode == 2, result.output
    [line] = [line for line in result.stderr.splitlines() if args[0] in line and "configuration error" in line]
    assert re.search(rf"did you mean {meant}\b", line, re.IGNORECASE), line
    assert "summary: outcome=config-error" in summary_line(result.stderr)
    assert openai_fake.calls() == 0 and veza.requests == []


def test_help_lists_the_hyphenated_spelling_of_each_flag_first():
    """--veza-url before --veza_url, --save-json before --save_json, like every other flag (--max-run-time); the
    underscore spellings stay as aliases. The first flag of an option is the one messages name."""
    text = vo.build_arg_parser().format_help()
    for hyphenated, underscored in (("--veza-url", "--veza_url"), ("--save-json", "--save_json"),
                                    ("--openai-org", "--openai_org")):
        assert hyphenated in text and underscored in text
        assert text.index(hyphenated) < text.index(underscored), (hyphenated, underscored)
    for option in vo.OPTIONS:
        if option.flags:
            assert "_" not in option.flags[0], option.flags


def test_configuration_errors_name_the_hyphenated_flags():
    """Messages lead with --veza-url and --save-json, as --help does."""
    problems = config_problems(["--save-json", "/proc/veza-out"], {k: v for k, v in ENV.items() if k != "VEZA_URL"})
    [veza_url] = [p for p in problems if "VEZA_URL" in p]
    [save_json] = [p for p in problems if "/proc/veza-out" in p]
    assert "--veza-url" in veza_url and "--veza_url" not in veza_url
    assert save_json.startswith("--save-json ") and "--save_json" not in save_json


def test_the_underscore_spellings_still_work(run_connector, veza, tmp_path):
    """--veza_url and --save_json, as in older cron lines and scripts, still parse as aliases."""
    result = run_connector(*NO_ROLE_READS, "--veza_url", veza.url, "--save_json", str(tmp_path / "out.json"),
                           drop=("VEZA_URL",))
    assert result.returncode == 0, result.output
    assert len(veza.payloads) == 1 and json.loads((tmp_path / "out.json").read_text()) == veza.payloads[0]
