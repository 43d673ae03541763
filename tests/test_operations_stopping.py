"""Stopping: signals while reading, pushing or reporting, a second signal, and running as PID 1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import NO_ROLE_READS, SCRIPT, clean_environment, summary_line
from fake_openai import Fault

import veza_openai

NOTHING_PUSHED = "nothing was pushed"


def slow_users(openai_fake) -> None:
    openai_fake.faults.append(Fault(r"^/organization/users$", kind="delay-only", delay=5, times=None))


def wait_for_users_read(openai_fake, process: subprocess.Popen, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while openai_fake.calls(r"^/organization/users$") == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the connector never asked for users"
        time.sleep(0.02)
    time.sleep(0.2)  # well inside the 5 s answer


def signal_when_ready(command: list[str], environment: dict[str, str], cwd: Path,
                      ready: Callable[[subprocess.Popen], tuple[int, int]]) -> tuple[int, float, str]:
    """Start `command`; when `ready(process)` returns (a pid and the signal to send it), send it; return the
    exit status, the seconds from the signal to the exit, and stderr. The process never outlives the test."""
    process = subprocess.Popen(command, env=environment, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        pid, signum = ready(process)
        sent = time.monotonic()
        os.kill(pid, signum)
        _, stderr = process.communicate(timeout=10)
        return process.returncode, time.monotonic() - sent, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# SIGINT back to its default before exec, whatever the test runner's disposition (an ignored SIGINT stays
# ignored across exec; a default one gets Python's KeyboardInterrupt handler). No preexec_fn: the fakes run threads.
DEFAULT_SIGINT = ("-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


UNKNOWN = "outcome unknown: Veza may have received the payload; check data source 'OpenAI - org-demo0001'"


def child_of(pid: int, limit: float = 10) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} has no child")


def wait_a_moment_for_the_handler() -> None:
    for _ in range(20):  # a handler runs at the next bytecode boundary (for our own pid, before os.kill returns)
        time.sleep(0.01)


QUERIES = ("GET", "/api/v1/assessments/queries")


@pytest.mark.parametrize(("signum", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                         (signal.SIGINT, 130, "Ctrl-C (SIGINT)")])
def test_a_signal_while_reading_stops_within_seconds_and_pushes_nothing(tmp_path, ca, openai_fake, veza, signum,
                                                                        status, name):
    slow_users(openai_fake)

    def reading(process: subprocess.Popen) -> tuple[int, int]:
        wait_for_users_read(openai_fake, process)
        return process.pid, signum

    returncode, elapsed, stderr = signal_when_ready(
        [sys.executable, *DEFAULT_SIGINT, sys.executable, str(SCRIPT), *NO_ROLE_READS],
        clean_environment(tmp_path, ca, openai_fake, veza, None, ()), tmp_path, reading)
    assert returncode == status, stderr
    assert elapsed < 2.5, elapsed
    assert f"stopped by {name}" in stderr
    assert NOTHING_PUSHED in stderr
    assert "outcome=interrupted" in summary_line(stderr)
    assert veza.pushes == []


def test_sigterm_during_the_push_exits_143_with_the_outcome_unknown(tmp_path, ca, openai_fake, veza):
    veza.push_then, veza.drip_interval = "drip", 0.5  # stored, then an answer that takes ~30 s

    def pushing(process: subprocess.Popen) -> tuple[int, int]:
        deadline = time.monotonic() + 20
        while not veza.pushes:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        time.sleep(0.2)
        return process.pid, signal.SIGTERM

    returncode, elapsed, stderr = signal_when_ready(
        [sys.executable, str(SCRIPT), *NO_ROLE_READS], clean_environment(tmp_path, ca, openai_fake, veza, None, ()),
        tmp_path, pushing)
    assert returncode == 143, stderr
    assert elapsed < 2.5, elapsed
    assert "stopped by SIGTERM" in stderr and UNKNOWN in stderr and NOTHING_PUSHED not in stderr
    assert "outcome=unknown" in summary_line(stderr)


def test_sigterm_stops_the_connector_running_as_pid_1_of_its_namespace(tmp_path, ca, openai_fake, veza):
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid --fork --mount-proc is not permitted here: {probe.stderr.decode().strip()}")
    slow_users(openai_fake)

    def reading_as_pid_1(process: subprocess.Popen) -> tuple[int, int]:
        connector = child_of(process.pid)
        status = Path(f"/proc/{connector}/status").read_text()
        assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), status  # PID 1 in its namespace
        wait_for_users_read(openai_fake, process)
        return connector, signal.SIGTERM

    returncode, elapsed, stderr = signal_when_ready(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(SCRIPT), *NO_ROLE_READS],
        clean_environment(tmp_path, ca, openai_fake, veza, None, ()), tmp_path, reading_as_pid_1)
    assert returncode == 143, stderr
    assert elapsed < 2.5, elapsed
    assert "stopped by SIGTERM" in stderr and NOTHING_PUSHED in stderr
    assert "outcome=interrupted" in summary_line(stderr)
    assert veza.pushes == []


def test_stop_on_signals_raises_stopped_inside_and_restores_the_previous_handler_after():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    original = signal.getsignal(signal.SIGTERM)
    marker = []

    def previous(signum, frame):
        marker.append(signum)

    signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(veza_openai.Stopped) as stopped, veza_openai.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs at the next bytecode boundary
                time.sleep(0.01)
        assert stopped.value.signal_name == "SIGTERM"
        assert stopped.value.status == 143
        assert not isinstance(stopped.value, Exception)  # `except Exception` in the run cannot swallow it
        assert signal.getsignal(signal.SIGTERM) is previous
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if marker:
                break
            time.sleep(0.01)
        assert marker == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


def test_a_second_signal_while_the_first_is_handled_changes_nothing():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    with veza_openai.stop_on_signals():
        with pytest.raises(veza_openai.Stopped):
            os.kill(os.getpid(), signal.SIGINT)
            wait_a_moment_for_the_handler()
        os.kill(os.getpid(), signal.SIGINT)  # the double Ctrl-C, while the first is being handled
        wait_a_moment_for_the_handler()


def test_sigterm_while_creating_the_report_keeps_the_completed_push_as_pushed(tmp_path, ca, openai_fake, veza):
    veza.delays[QUERIES] = 5.0

    def making_the_report(process: subprocess.Popen) -> tuple[int, int]:
        deadline = time.monotonic() + 20
        while QUERIES not in veza.requests:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        return process.pid, signal.SIGTERM

    returncode, elapsed, stderr = signal_when_ready(
        [sys.executable, str(SCRIPT), *NO_ROLE_READS, "--create-report"],
        clean_environment(tmp_path, ca, openai_fake, veza, None, ()), tmp_path, making_the_report)
    assert len(veza.pushes) == 1
    assert returncode == 143, stderr
    assert elapsed < 2.5, elapsed
    assert "stopped by SIGTERM after the push had completed" in stderr
    assert "outcome unknown" not in stderr and "nothing was pushed" not in stderr
    summary = stderr.splitlines()[-1]
    assert "outcome=pushed" in summary and "report=interrupted" in summary, summary


def test_a_double_ctrl_c_while_reading_exits_130_without_a_traceback(tmp_path, ca, openai_fake, veza):
    slow_users(openai_fake)

    def reading(process: subprocess.Popen) -> tuple[int, int]:
        wait_for_users_read(openai_fake, process)
        os.kill(process.pid, signal.SIGINT)  # the first; signal_when_ready sends the second at once
        return process.pid, signal.SIGINT

    returncode, _, stderr = signal_when_ready(
        [sys.executable, *DEFAULT_SIGINT, sys.executable, str(SCRIPT), *NO_ROLE_READS],
        clean_environment(tmp_path, ca, openai_fake, veza, None, ()), tmp_path, reading)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "outcome=interrupted" in stderr.splitlines()[-1]
    assert veza.pushes == []
