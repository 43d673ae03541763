"""Stopping a run: a completed push stays pushed, and a second Ctrl-C never turns a clean stop into a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import NO_ROLE_READS, SCRIPT, clean_environment
from test_live_org_and_hostile_answers import DEFAULT_SIGINT, signal_when_ready, slow_users, wait_for_users_read

import veza_openai

QUERIES = ("GET", "/api/v1/assessments/queries")


def wait_a_moment_for_the_handler() -> None:
    for _ in range(20):  # a handler runs at the next bytecode boundary (for our own pid, before os.kill returns)
        time.sleep(0.01)


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
    assert "stopped by SIGTERM while creating the Veza report; the push had completed" in stderr
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
