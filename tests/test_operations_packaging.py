"""The files around the script: layout, lint, Dockerfile, requirements, CI and README agree."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    path = shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", ""))
    assert path, f"{name} is not installed; install tests/requirements.txt"
    return path


def test_top_level_holds_only_the_design_cards_layout_with_docs_and_deploy_files():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {line.split("/")[0] for line in tracked.splitlines()}
    allowed = {"veza_openai.py", "requirements.txt", "requirements.lock", "Dockerfile", "README.md", "CHANGELOG.md",
               "tests", "LICENSE", ".ci", "docs", "deploy"}
    assert {entry for entry in top if not entry.startswith(".")} <= allowed
    assert allowed - {"README.md", "CHANGELOG.md"} <= top | {"README.md", "CHANGELOG.md"}
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    locks = [entry for entry in top if re.search(r"(lock|constraints)", entry, re.IGNORECASE)]
    assert locks == ["requirements.lock"], "exactly one pinned requirements lock"


def test_script_is_executable_with_a_python_shebang():
    script = ROOT / "veza_openai.py"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")


def test_ruff_is_clean():
    result = subprocess.run([tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes_the_dockerfile():
    result = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_locked_requirements_on_a_pinned_base_and_runs_the_script_once_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim@sha256:[0-9a-f]{64}$", text, re.M), "the base image is pinned by digest"
    assert "COPY requirements.lock ." in text
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in text
    assert "COPY veza_openai.py ." in text
    assert re.search(r'^ENTRYPOINT \["python", "/app/veza_openai.py"\]$', text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert "CMD" not in text and "cron" not in text.lower()  # one run, then exit; scheduling is the host's
    digest = re.search(r"@(sha256:[0-9a-f]{64})", text).group(1)
    assert digest in (ROOT / "README.md").read_text(), "the README says where the base image digest came from"


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {normalized name: (version, hashes)}."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, *options = line.split()
            name, _, version = requirement.partition("==")
            entries[canonical(name)] = (version, [o.removeprefix("--hash=") for o in options])
    return entries


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_package_to_one_version_with_hashes_and_no_local_index():
    entries = lock_entries()
    assert entries
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[\w.+!]+", version), f"{name} is not pinned with =="
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    text = (ROOT / "requirements.lock").read_text()
    assert "pip-compile" in text and "--generate-hashes" in text, "the lock says how it was made"
    assert "--index-url" not in text and "--find-links" not in text and "file:" not in text


def test_the_lock_holds_requirements_txt_at_its_versions_and_everything_they_need():
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    entries = lock_entries()
    top = [Requirement(line) for line in (ROOT / "requirements.txt").read_text().split()]
    for requirement in top:
        assert entries[canonical(requirement.name)][0] in requirement.specifier, requirement
    # The dependency tree as installed here (the tests install requirements.txt): every name in it is locked.
    needed, todo = set(), [canonical(r.name) for r in top]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                todo.append(canonical(dependency.name))
    assert needed <= set(entries), f"not in requirements.lock: {sorted(needed - set(entries))}"


def test_dockerignore_sends_only_the_files_the_image_copies():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:  # Docker's rule: the last pattern that matches decides
        verdict = False
        for pattern in patterns:
            negated, pattern = pattern.startswith("!"), pattern.lstrip("!")
            parts = path.split("/")
            if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
                verdict = not negated
        return verdict

    copied = re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.M)
    assert copied and not any(ignored(path) for path in copied)
    for path in (".venv/lib/python3.11/site-packages/x.py", ".git/config", "tests/demo.py", "__pycache__/a.pyc",
                 ".pytest_cache/v/x", ".ruff_cache/x", "openai-org-x-20261130T000000Z.json", "payload.json",
                 "openai.env", "README.md"):
        assert ignored(path), path


def test_requirements_pin_what_the_script_imports():
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split())
    assert pins["oaaclient"] == "1.2.0" and "requests" in pins
    # Parsed in a process of its own: CPython 3.11's ast.parse can fail with "AST constructor recursion
    # depth mismatch" while another thread of this test process compiles code.
    lister = ("import ast, json, sys; tree = ast.parse(open(sys.argv[1]).read()); print(json.dumps(sorted("
              "{a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | "
              "{n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module "
              "and n.level == 0})))")
    done = subprocess.run([sys.executable, "-c", lister, str(ROOT / "veza_openai.py")], capture_output=True,
                          text=True, check=True)
    imported = set(json.loads(done.stdout))
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "__future__"}
    assert third_party == {"oaaclient", "requests"}


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ".venv/bin/python -m pytest -q -n 6 --dist worksteal tests"
    assert command in readme and command in ci
    assert ci.strip().splitlines()[-1] == command
    assert "pip install -r tests/requirements.txt" in readme
    assert "-r tests/requirements.txt" in ci and "python3 -m venv .venv" in ci


@pytest.mark.slow
def test_the_demo_runs_the_real_script_against_the_bundled_fakes_and_shows_the_report():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "demo.py"), "--create-report"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OPENAI_API_KEY": "", "VEZA_API_KEY": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fake Veza received one push to data source 'OpenAI - org-demo0001'" in result.stdout
    assert re.search(r"the payload is at \S+payload\.json", result.stdout)
    assert "fake Veza holds the report 'OpenAI access review' with 8 saved queries" in result.stdout
    # its closing counts are the summary's: a certificate is not a project
    counted = dict(field.split("=") for field in
                   re.search(r"^counted in the payload: (.*)$", result.stdout, re.M).group(1).split())
    summary_line = result.stderr.strip().splitlines()[-1].split("summary: ", 1)[1]
    summary = dict(field.split("=", 1) for field in summary_line.split())
    assert counted["projects"] == summary["projects"] and counted["certificates"] == summary["certificates"]
    assert {name: summary[name] for name in counted} == counted
    assert "the same as the summary line" in result.stdout
    # who reaches proj_alpha by each path (tests/access_paths.py): the admin key and the custom organization role
    # (held by group_fin, its member user-0012 and user-0013) reach every project
    [reach] = re.findall(r"^project proj_alpha is reached by: .*$", result.stdout, re.M)
    assert "5 direct members, 1 group, 3 members through groups, 1 owner, 3 holders of an organization role, " \
           "1 admin key, 3 project keys, 2 federation rules (" in reach, reach


def test_both_fakes_run_standalone_from_the_command_line(tmp_path):
    import requests

    commands = {
        "openai": [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--admin-key", "sk-admin-standalone-1"],
        "veza": [sys.executable, str(ROOT / "tests" / "fake_veza.py"), "--ca-file", str(tmp_path / "ca.pem")],
    }
    processes = {name: subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                 for name, command in commands.items()}
    try:
        openai_line = processes["openai"].stdout.readline()
        veza_line = processes["veza"].stdout.readline()
        base_url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", openai_line).group(1)
        users = requests.get(f"{base_url}/organization/users", params={"limit": 100}, timeout=5,
                             headers={"Authorization": "Bearer sk-admin-standalone-1"}).json()
        assert users["object"] == "list" and len(users["data"]) == 100 and users["has_more"] is True
        veza_url = re.search(r"at (https://127\.0\.0\.1:\d+);", veza_line).group(1)
        templates = requests.get(f"{veza_url}/api/v1/providers/custom/templates", timeout=5,
                                 verify=str(tmp_path / "ca.pem"),
                                 headers={"authorization": "Bearer veza-fake-key-0001"})
        assert templates.status_code == 200
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=10)


def test_the_changelog_dates_every_version_down_to_1_0_0_and_says_how_to_upgrade():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    released = [re.fullmatch(r"(\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2})\)", heading) for heading in headings
                if heading != "Unreleased"]
    assert all(released), headings
    versions = [tuple(map(int, match.group(1).split("."))) for match in released]
    dates = [match.group(2) for match in released]
    assert versions == sorted(versions, reverse=True) and dates == sorted(dates, reverse=True)
    assert versions[-1] == (1, 0, 0)
    import veza_openai as vo
    assert tuple(map(int, vo.__version__.split("."))) in versions, "the script's version has its entry"
    # the breaking change of 1.1.0 is named where an upgrader looks
    section_110 = text.split("## 1.1.0", 1)[1].split("\n## ", 1)[0]
    upgrading = section_110.split("**Upgrading**", 1)[1]
    assert "project_owner_via_organization" in upgrading and "granted_by" in upgrading


@pytest.mark.slow
def test_the_demos_help_says_what_the_demo_does_and_runs_nothing():
    """`tests/demo.py --help` is the demo's own help (what it starts and shows, that flags pass through), exit 0;
    it does not run the connector's --help and then report "demo failed"."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "demo.py"), "--help"], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("usage: ") and "demo.py" in result.stdout.splitlines()[0]
    assert "fake" in result.stdout and "veza_openai.py --help" in result.stdout
    assert "demo failed" not in result.stdout + result.stderr
    assert "usage: veza_openai.py" not in result.stdout and "summary:" not in result.stderr
