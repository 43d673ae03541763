"""./veza_openai.py run as a real process, as a user runs it: the smoke tests behind the in-process runner.

Every other end-to-end test calls veza_openai.main() in the test process (`run_connector`); these check what
only a real process shows: the shebang and executable bit, exit statuses as the shell sees them, argparse
exiting, and that the in-process runner sees what a real run does.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import OPENAI_SECRET, SCRIPT, VEZA_SECRET, application, clean_environment

pytestmark = pytest.mark.slow  # each starts a Python process


def test_the_executable_script_pushes_the_organization_and_exits_0(run_connector_subprocess, veza):
    result = run_connector_subprocess()
    assert result.returncode == 0, result.output
    assert len(veza.payloads) == 1 and len(application(veza.payloads[0])["local_users"]) > 120
    assert re.search(r"summary: outcome=pushed users=120 .* retries=0 seconds=", result.stderr.splitlines()[-1])
    assert OPENAI_SECRET not in result.output and VEZA_SECRET not in result.output


def test_help_exits_0_with_the_usage_on_stdout(run_connector_subprocess, veza, openai_fake):
    result = run_connector_subprocess("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: veza_openai.py")
    assert "--role-assignments" in result.stdout and result.stderr == ""
    assert veza.requests == [] and openai_fake.calls() == 0


def test_an_unknown_flag_exits_2_with_argparses_message(run_connector_subprocess):
    result = run_connector_subprocess("--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.mark.parametrize("args", [("--help",), ()], ids=["--help", "a run"])
def test_run_by_a_python_without_the_packages_it_says_how_to_install_them_in_one_line(tmp_path, ca, openai_fake,
                                                                                         veza, args):
    """`./veza_openai.py --help` outside the venv (the shebang finds a python3 without requests and oaaclient)
    is one line naming the missing package and `pip install -r requirements.txt`, exit 2, not a
    ModuleNotFoundError traceback. `python -S` leaves out every site-packages directory, the venv's too."""
    environment = clean_environment(tmp_path, ca, openai_fake, veza, None, ())
    done = subprocess.run([sys.executable, "-S", "-E", str(SCRIPT), *args], env=environment, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output
    [message] = [line for line in output.splitlines() if "requirements.txt" in line]
    assert "pip install -r requirements.txt" in message
    assert re.search(r"\b(requests|oaaclient)\b", message), message
    if args == ("--help",):
        assert output.strip() == message.strip()
    assert openai_fake.calls() == 0 and veza.requests == []


def test_a_configuration_error_exits_2_with_a_summary_and_no_traceback(run_connector_subprocess, veza, openai_fake):
    result = run_connector_subprocess(drop=("OPENAI_ORG_ID",))
    assert result.returncode == 2
    assert "configuration error: OPENAI_ORG_ID (or --openai-org) is not set" in result.stderr
    assert "summary: outcome=config-error" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.output
    assert veza.requests == [] and openai_fake.calls() == 0


def test_a_failed_run_exits_1_with_one_line_errors_and_no_traceback(run_connector_subprocess, veza, openai_fake):
    openai_fake.refused["users"] = 403
    result = run_connector_subprocess()
    assert result.returncode == 1
    assert "Admin API key (sk-admin-...)" in result.stderr
    assert "nothing was pushed; Veza keeps the previous snapshot" in result.stderr
    assert "outcome=failed" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.output
    assert veza.pushes == []


def test_in_process_and_subprocess_runs_push_the_same_payload_and_log_the_same_lines(run_connector,
                                                                                       run_connector_subprocess, veza):
    in_process = run_connector("--max-workers", "1")
    real = run_connector_subprocess("--max-workers", "1")
    assert in_process.returncode == real.returncode == 0
    assert veza.payloads[0] == veza.payloads[1]
    assert untimed_log(in_process.stderr) == untimed_log(real.stderr)
    assert in_process.stdout == real.stdout == ""


# Logged when a timer fires or counting what is known at that moment: which and how many depends on load.
TIMED_LINES = ("progress: ", "role assignment reads: ")


def untimed_log(stderr: str) -> tuple[list[str], list[str]]:
    """What a run logs that does not depend on timing: the messages logged while reads run (their order follows
    the scheduling, so sorted) and those from the end of reading on (in order); without timestamps, durations,
    timed lines, and creating what an earlier run already created."""
    messages = [re.sub(r"\d+\.\d\ds\b|seconds=\S+|oldest_read=\S*", "", line.split(" ", 2)[2])
                for line in stderr.splitlines() if "creating Veza" not in line]  # level and message
    messages = [message for message in messages if not message.split(" ", 1)[1].startswith(TIMED_LINES)]
    end_of_reading = next(i for i, message in enumerate(messages) if re.match(r"INFO read \d+ users, ", message))
    return sorted(messages[:end_of_reading]), messages[end_of_reading:]


def test_the_log_comparison_ignores_timing_but_not_content():
    first = ("2026-01-01 00:00:00,001 INFO reading OpenAI organization org-x\n"
             "2026-01-01 00:00:00,002 INFO read 3 audit log events in 1.02s\n"
             "2026-01-01 00:00:00,003 INFO progress: 10 reads done, 5 open\n"
             "2026-01-01 00:00:00,004 INFO role assignment reads: 250 users and 0 project members so far\n"
             "2026-01-01 00:00:00,005 INFO read 250 users, 2 projects, 2 groups in 289 calls\n"
             "2026-01-01 00:00:00,006 INFO summary: outcome=pushed users=250 seconds=1.2\n")
    reordered = ("2026-01-01 00:00:09,001 INFO reading OpenAI organization org-x\n"
                 "2026-01-01 00:00:09,003 INFO role assignment reads: 250 users and 4 project members so far\n"
                 "2026-01-01 00:00:09,004 INFO read 3 audit log events in 3.50s\n"
                 "2026-01-01 00:00:09,005 INFO read 250 users, 2 projects, 2 groups in 289 calls\n"
                 "2026-01-01 00:00:09,006 INFO summary: outcome=pushed users=250 seconds=9.9\n")
    assert untimed_log(first) == untimed_log(reordered)
    assert untimed_log(first) != untimed_log(first.replace("users=250 seconds", "users=249 seconds"))
    assert untimed_log(first) != untimed_log(first.replace("read 3 audit", "read 4 audit"))


def test_an_in_process_run_leaves_the_test_process_as_it_found_it(run_connector, tmp_path):
    import gc
    import logging
    import os
    import sys

    before = (os.environ.copy(), os.getcwd(), sys.argv[:], sys.stdout, sys.stderr, logging.getLogger().handlers[:],
              logging.getLogger().level, logging.getLogger("veza_openai").level, gc.isenabled())
    for args in (("--debug", "--save_json", str(tmp_path)), ("--help",), ("--max-workers", "0")):
        run_connector(*args)
        after = (os.environ.copy(), os.getcwd(), sys.argv[:], sys.stdout, sys.stderr,
                 logging.getLogger().handlers[:], logging.getLogger().level, logging.getLogger("veza_openai").level,
                 gc.isenabled())
        assert after == before, args
