"""Secrets: where the keys come from and which wins; a key never reaches a log line, traceback, file or proxy."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, TinyServer
from fake_openai import Fault

import veza_openai as vo

ADMIN_KEY_LOOKALIKE = "sk-admin-PASTED-by-mistake-0123456789"


class RecordingProxy(TinyServer):
    """Accepts any connection on 127.0.0.1, records what it was sent, answers 502."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        super().__init__()

    def answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(1)
            try:
                self.seen.append(connection.recv(65536))
                connection.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                self.seen.append(b"")


@pytest.fixture
def proxy():
    server = RecordingProxy()
    yield server
    server.stop()


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
    assert "VEZA_API_KEY_FILE: the file it names cannot be read (No such file or directory)" in result.stderr
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
    for formatter in (vo.RedactingFormatter([]), vo.JsonFormatter([])):
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


def test_redacting_formatter_masks_secrets_in_messages_and_tracebacks():
    import logging
    formatter = vo.RedactingFormatter(["sk-admin-secret-value", " "])
    try:
        raise ValueError("bad key sk-admin-secret-value")
    except ValueError:
        import sys
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key %s", ("sk-admin-secret-value",),
                                   sys.exc_info())
    text = formatter.format(record)
    assert "sk-admin-secret-value" not in text and text.count("[REDACTED]") == 3 and " " in text


def test_no_secret_appears_in_output_or_saved_file_even_with_debug(run_connector, tmp_path):
    for args in ((), ("--debug",)):
        result = run_connector("--save_json", str(tmp_path), *args)
        assert result.returncode == 0
        for secret in (OPENAI_SECRET, VEZA_SECRET):
            assert secret not in result.output
            for saved in result.saved_json():
                assert secret not in saved.read_text()
    assert "DEBUG" in result.stderr


def test_a_config_error_with_the_openai_key_from_a_file_masks_its_content_in_the_log(run_connector, tmp_path):
    """The content of OPENAI_API_KEY_FILE never reaches a configuration error line: only its path does."""
    key_file = tmp_path / "openai-key"
    key_file.write_text(OPENAI_SECRET + " trailing-space\n")
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY_FILE": str(key_file)}, drop=("OPENAI_API_KEY",))
    assert result.returncode == 2, result.output
    assert "OPENAI_API_KEY_FILE contains whitespace" in result.stderr
    assert OPENAI_SECRET not in result.output and "trailing-space" not in result.output


@pytest.mark.parametrize("key", ["sk-admin-wxyz", "sk-proj-abcd", "sk-admin-ab12"])
def test_mask_key_never_shows_the_whole_secret_part_of_a_short_key(key):
    """`mask_key` shows the kind and at most the last four characters, and never every character after the
    public prefix: the configuration accepts a key of any length, so a short (test or mistyped) key must not
    be printed whole by its 'masked' form."""
    masked = vo.mask_key(key)
    kind = next(p for p in ("sk-admin-", "sk-proj-", "sk-") if key.startswith(p))
    secret_part = key[len(kind):]
    assert secret_part not in masked, masked


def test_a_secret_with_a_quote_or_backslash_is_masked_in_json_logs(capsys):
    """JSON logs escape '"' and '\\'; a key holding either (the configuration accepts any printable ASCII) is
    still found and masked in the JSON line."""
    secret = 'veza-key"with\\quote-1234'
    handler = logging.StreamHandler()
    handler.setFormatter(vo.JsonFormatter([secret]))
    record = logging.LogRecord("veza_openai", logging.ERROR, __file__, 1, "Veza said: bad token %s", (secret,), None)
    text = handler.format(record)
    assert secret not in json.loads(text)["message"], text


def test_a_secret_is_masked_in_the_json_traceback_field():
    """The JSON format's `traceback` field (--debug) is masked like the message."""
    secret = "veza-secret-value-12345"
    formatter = vo.JsonFormatter([secret])
    try:
        raise RuntimeError(f"token {secret} refused")
    except RuntimeError:
        import sys
        record = logging.LogRecord("veza_openai", logging.ERROR, __file__, 1, "failed %s", (secret,), sys.exc_info())
    text = formatter.format(record)
    entry = json.loads(text)
    assert "traceback" in entry and "RuntimeError" in entry["traceback"]
    assert secret not in text and "[REDACTED]" in entry["traceback"]


def test_debug_tracebacks_of_a_failed_run_never_show_either_key(run_connector, veza, openai_fake):
    """--debug with a failure whose message carries the key text (a server that echoes the Authorization
    value): neither key reaches the tracebacks."""
    openai_fake.faults.append(Fault(r"^/organization/users$", status=400,
                                    body={"error": {"message": f"bad header Bearer {OPENAI_SECRET} / {VEZA_SECRET}"}},
                                    times=None))
    result = run_connector(*NO_ROLE_READS, "--debug", "--log-format", "json")
    assert result.returncode == 1, result.output
    assert OPENAI_SECRET not in result.output and VEZA_SECRET not in result.output
    assert "[REDACTED]" in result.output


@pytest.mark.parametrize("names", [("HTTP_PROXY", "http_proxy"),
                                   ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY")])
def test_a_proxy_from_the_environment_never_sees_requests_to_a_loopback_openai(run_connector, veza, tmp_path,
                                                                              proxy, names):
    env = dict.fromkeys(names, proxy.url)
    # ALL_PROXY/HTTPS_PROXY also apply to the (https, loopback) fake Veza, which an operator's proxy serves: dry run
    dry = ("--dry-run",) if "ALL_PROXY" in names else ()
    result = run_connector(*NO_ROLE_READS, *dry, env=env)
    assert result.returncode == 0, result.output
    assert proxy.seen == []
    assert len(veza.payloads) == (0 if dry else 1)
    if dry:
        assert len(result.saved_json()) == 1


def test_keys_are_read_from_mounted_files_with_their_trailing_newline_dropped(run_connector, veza, tmp_path):
    (tmp_path / "openai").write_text(OPENAI_SECRET + "\n")
    (tmp_path / "veza").write_text(VEZA_SECRET + "\r\n")
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY_FILE": str(tmp_path / "openai"),
                                                "VEZA_API_KEY_FILE": str(tmp_path / "veza")},
                           drop=("OPENAI_API_KEY", "VEZA_API_KEY"))
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1
    assert "OpenAI key from OPENAI_API_KEY_FILE (sk-admin-...i-77)" in result.stderr
    assert OPENAI_SECRET not in result.output and VEZA_SECRET not in result.output


@pytest.mark.parametrize(("env", "message"), [
    ({"VEZA_API_KEY_FILE": "{tmp}/veza"}, "VEZA_API_KEY and VEZA_API_KEY_FILE are both set; set only one"),
    ({"OPENAI_API_KEY_FILE": "{tmp}/missing"}, "OPENAI_API_KEY_FILE: '{tmp}/missing' cannot be read "
                                               "(No such file or directory)"),
    ({"OPENAI_ADMIN_KEY_FILE": "{tmp}/empty"}, "OPENAI_ADMIN_KEY_FILE: '{tmp}/empty' is empty"),
    ({"OPENAI_ADMIN_KEY_FILE": "{tmp}/two-lines"}, "OPENAI_ADMIN_KEY_FILE contains whitespace, a newline"),
])
def test_a_bad_secret_file_is_a_configuration_error_naming_the_path_never_the_content(run_connector, veza,
                                                                                      openai_fake, tmp_path, env,
                                                                                      message):
    (tmp_path / "veza").write_text(VEZA_SECRET)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two-lines").write_text("sk-admin-first-line-1234\nsk-admin-second-line-5678\n")
    drop = tuple(name.removesuffix("_FILE") for name in env if name.startswith("OPENAI_API_KEY"))
    result = run_connector(env={k: v.format(tmp=tmp_path) for k, v in env.items()}, drop=drop)
    assert result.returncode == 2, result.output
    assert f"configuration error: {message.format(tmp=tmp_path)}" in result.stderr
    assert "first-line" not in result.output and "second-line" not in result.output
    assert openai_fake.calls() == 0 and veza.requests == []


def test_the_admin_key_wins_over_a_project_key_in_openai_api_key(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY": "sk-proj-FAKE-for-other-tools-9",
                                                "OPENAI_ADMIN_KEY": OPENAI_SECRET})
    assert result.returncode == 0, result.output
    assert "OpenAI key from OPENAI_ADMIN_KEY (sk-admin-...i-77)" in result.stderr
    assert "for-other-tools" not in result.output


def test_a_netrc_entry_for_the_hosts_never_replaces_the_keys(run_connector, veza, tmp_path):
    """requests swaps an Authorization header for ~/.netrc's Basic credentials when a request has no `auth`
    of its own; an operator's .netrc entry for api.openai.com or the Veza host must not cost the run."""
    netrc = tmp_path / ".netrc"  # HOME is tmp_path
    netrc.write_text("machine 127.0.0.1\nlogin someone\npassword NETRC-PASSWORD-55\n")
    netrc.chmod(0o600)
    reading_only = run_connector(*NO_ROLE_READS, "--dry-run")  # OpenAI alone first: Veza is checked before it
    assert reading_only.returncode == 0, reading_only.output
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1


@pytest.mark.parametrize("ending", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "VEZA_API_KEY"])
def test_a_key_with_a_trailing_newline_says_how_to_fix_it_never_the_key(run_connector, veza, openai_fake, variable,
                                                                         ending):
    """`export OPENAI_API_KEY="$(cat key)"`-style slips leave a newline at the end: the configuration error says
    the key ends with a newline and how to fix it (the _FILE variable, whose trailing newlines are dropped),
    without the key."""
    secret = {"OPENAI_API_KEY": OPENAI_SECRET, "VEZA_API_KEY": VEZA_SECRET}[variable]
    result = run_connector(*NO_ROLE_READS, env={variable: secret + ending})
    assert result.returncode == 2, result.output
    [line] = [line for line in result.stderr.splitlines() if f"configuration error: {variable}" in line]
    assert "newline" in line and f"{variable}_FILE" in line, line
    assert secret not in result.output and secret[-12:] not in result.output
    assert openai_fake.calls() == 0 and veza.requests == []


READABLE_BY_OTHERS = "readable by other users"


@pytest.mark.parametrize(("variable", "mode", "warns"), [
    ("OPENAI_API_KEY_FILE", 0o644, True),
    ("OPENAI_API_KEY_FILE", 0o604, True),
    ("VEZA_API_KEY_FILE", 0o644, True),
    ("OPENAI_API_KEY_FILE", 0o600, False),
    ("OPENAI_API_KEY_FILE", 0o440, False),  # Kubernetes' read-only secret mount with fsGroup
], ids=lambda value: f"{value:04o}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
def test_a_secret_file_readable_by_other_users_is_a_counted_warning_and_the_run_goes_on(run_connector, veza, tmp_path,
                                                                                       variable, mode, warns):
    """A key file anyone on the host can read (o+r) is said at the start of the run, with the fix, and counted in
    warnings=; owner- or group-only files (0600, Kubernetes' 0440) are not. Either way the run pushes."""
    secret = {"OPENAI_API_KEY_FILE": OPENAI_SECRET, "VEZA_API_KEY_FILE": VEZA_SECRET}[variable]
    key_file = tmp_path / "secret-key"
    key_file.write_text(secret + "\n")
    key_file.chmod(mode)
    result = run_connector(*NO_ROLE_READS, env={variable: str(key_file)}, drop=(variable.removesuffix("_FILE"),))
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1
    lines = result.stderr.splitlines()
    said = [line for line in lines if READABLE_BY_OTHERS in line]
    if warns:
        [line] = said
        assert " WARNING " in line and variable in line and "chmod 600" in line, line
        assert f" warnings={sum(' WARNING ' in line for line in lines)} " in lines[-1]
    else:
        assert said == []
    assert secret not in result.output
