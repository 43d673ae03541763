"""Every command the README gives a newcomer (set-up, Quick start, Docker and cron) is one the project supports:
its flags exist in `--help`, the files it names exist, the variables it sets are ones the connector reads."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT

import veza_openai as vo

README = ROOT / "README.md"
CHECKED_SECTIONS = ("Quick start", "Docker")  # and the set-up commands above the first section
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", ">&", "<&", "&>", "&>>"}
# Variables read by the libraries the connector uses, not by its own code.
LIBRARY_VARIABLES = {"REQUESTS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "OAA_API_RETRIES",
                     "OAA_API_TIMEOUT"}
# Programs a command may use without further checks: the shell's and the host's own.
HOST_TOOLS = {"jq", "mkdir", "chown", "chmod", "echo", "logger", "cat", "rm", "mail"}
DOCKER_RUN_OPTIONS_WITH_VALUE = {"-e", "--env", "--env-file", "-v", "--volume", "-u", "--user", "--name", "--mount",
                                 "--network", "-w", "--workdir", "--tmpfs", "--memory", "--cpus"}


@pytest.fixture(scope="module")
def help_flags() -> set[str]:
    shown = subprocess.run([sys.executable, str(ROOT / "veza_openai.py"), "--help"], capture_output=True, text=True,
                           check=True).stdout
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", shown.split("options:", 1)[1]))


def connector_variables() -> set[str]:
    source = (ROOT / "veza_openai.py").read_text()
    return set(re.findall(r"[\"']([A-Z][A-Z0-9_]+)[\"']", source)) | LIBRARY_VARIABLES


def sections(text: str, titles: tuple[str, ...]) -> str:
    """The text before the first `##` heading and the named sections, each up to the next heading of its level or
    higher."""
    headings = [(m.start(), len(m.group(1)), m.group(2).strip())
                for m in re.finditer(r"^(#{1,6}) (.+)$", text, re.MULTILINE)]
    first = next(start for start, level, _ in headings if level == 2)
    parts = [text[:first]]
    for i, (start, level, title) in enumerate(headings):
        if title in titles:
            end = next((s for s, lvl, _ in headings[i + 1:] if lvl <= level), len(text))
            parts.append(text[start:end])
    assert len(parts) == len(titles) + 1, f"the README lacks one of the sections {titles}"
    return "\n".join(parts)


class Checker:
    """Reads fenced blocks as a user would run them and lists what the project does not support."""

    def __init__(self, help_flags: set[str]):
        self.flags, self.variables = help_flags, connector_variables()
        self.commands: list[list[str]] = []
        self.problems: list[str] = []

    def block(self, language: str, text: str) -> None:
        if language in ("shell", "sh", "bash"):
            self.shell(text)
        elif language == "crontab":
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line):
                    self.shell(line.split(None, 5)[5])
        elif language == "env":
            for line in text.splitlines():
                if line.strip() and not line.startswith("#"):
                    name, _, value = line.partition("=")
                    self.variable(name)
                    if value[:1] in ("'", '"'):
                        self.problems.append(f"{name}: docker --env-file keeps quotes, so the value must be unquoted")

    def shell(self, text: str) -> None:
        for line in text.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            self.tokens(list(lexer))

    def tokens(self, tokens: list[str]) -> None:
        command: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in SEPARATORS:
                self.command(command)
                command = []
            elif token in REDIRECTIONS:
                if command and command[-1].isdigit():
                    command.pop()  # the 2 of 2>&1
                i += 1  # the redirection's target
            else:
                command.append(token)
            i += 1
        self.command(command)

    def command(self, argv: list[str]) -> None:
        if not argv:
            return
        self.commands.append(argv)
        program, args = argv[0], argv[1:]
        if program == "export":
            for assignment in args:
                self.variable(assignment.partition("=")[0])
        elif program in ("python3", "python3.11", ".venv/bin/python"):
            self.python(args)
        elif program == "./veza_openai.py":
            self.connector_flags(args)
        elif program.endswith("pip"):
            self.pip(args)
        elif program == "docker":
            self.docker(args)
        elif program == "flock":
            while args and args[0].startswith("-"):
                args = args[2:] if args[0] in ("-w", "-E", "--timeout", "--conflict-exit-code") else args[1:]
            self.command(args[1:])  # after the lock file
        elif program in ("sh", "bash") and args[:1] == ["-c"]:
            self.shell(args[1])
        elif program not in HOST_TOOLS:
            self.problems.append(f"{program}: not a program the README's commands are known to use")

    def python(self, args: list[str]) -> None:
        if args[:2] == ["-m", "venv"]:
            return
        if args[:2] == ["-m", "pip"]:
            return self.pip(args[2:])
        script = args[0]
        self.file(script)
        if script.endswith(("veza_openai.py", "tests/demo.py")):  # the demo passes its flags to the connector
            self.connector_flags(args[1:])

    def pip(self, args: list[str]) -> None:
        for option, value in zip(args, args[1:]):
            if option in ("-r", "--requirement", "-c", "--constraint"):
                self.file(value)

    def docker(self, args: list[str]) -> None:
        if args[0] == "build":
            context = [arg for i, arg in enumerate(args[1:], 1) if not arg.startswith("-")
                       and args[i - 1] not in ("-t", "--tag", "-f", "--file")]
            self.file(f"{context[0]}/Dockerfile")
        elif args[0] == "run":
            rest = args[1:]
            while rest and rest[0].startswith("-"):
                option, _, inline = rest[0].partition("=")
                value = inline or (rest[1] if option in DOCKER_RUN_OPTIONS_WITH_VALUE else None)
                if option in ("-e", "--env"):
                    self.variable(value.partition("=")[0])
                rest = rest[1:] if inline or option not in DOCKER_RUN_OPTIONS_WITH_VALUE else rest[2:]
            self.connector_flags(rest[1:])  # after the image
        elif args[0] not in ("push", "tag", "stop", "buildx"):
            self.problems.append(f"docker {args[0]}: not a docker command the README is known to use")

    def connector_flags(self, args: list[str]) -> None:
        for arg in args:
            if arg.startswith("-") and arg.partition("=")[0] not in self.flags:
                self.problems.append(f"{arg}: not a flag of veza_openai.py --help")

    def variable(self, name: str) -> None:
        if name not in self.variables:
            self.problems.append(f"{name}: not a variable the connector reads")

    def file(self, path: str) -> None:
        if not (ROOT / path).exists():
            self.problems.append(f"{path}: no such file in the repository")


def check(help_flags: set[str], markdown: str) -> Checker:
    checker = Checker(help_flags)
    for language, body in FENCE.findall(markdown):
        checker.block(language, body)
    return checker


def test_every_set_up_quick_start_docker_and_cron_command_is_supported(help_flags):
    checker = check(help_flags, sections(README.read_text(), CHECKED_SECTIONS))
    assert checker.problems == []
    seen = {" ".join(argv[:2]) for argv in checker.commands}
    # the commands a newcomer runs first were all read, so an empty or unparsed section cannot pass
    assert {"python3 -m", ".venv/bin/pip install", ".venv/bin/python tests/demo.py", ".venv/bin/python veza_openai.py",
            "docker build", "docker push", "docker run", "flock -n", "export OPENAI_ORG_ID=org-your_organization_id",
            "jq .applications[0].local_users[] | select(.is_active == false) | .name"} <= seen, seen
    assert any("--dry-run" in argv for argv in checker.commands)


@pytest.mark.parametrize(("block", "problem"), [
    ("```shell\n.venv/bin/python veza_openai.py --dry-run --no-such-flag\n```", "--no-such-flag: not a flag"),
    ("```shell\n./veza_openai.py --max-workers=4 --save-jsn x\n```", "--save-jsn: not a flag"),
    ("```shell\n.venv/bin/pip install -r requirements-dev.txt\n```", "requirements-dev.txt: no such file"),
    ("```shell\n.venv/bin/python tests/no_such_demo.py\n```", "tests/no_such_demo.py: no such file"),
    ("```shell\nexport OPENAI_KEY=sk-admin-x\n```", "OPENAI_KEY: not a variable"),
    ("```shell\ndocker run --rm -e OPENAI_TOKEN=x img:1 --dry-run\n```", "OPENAI_TOKEN: not a variable"),
    ("```shell\ndocker run --rm --env-file f img:1 --dry-rn\n```", "--dry-rn: not a flag"),
    ("```shell\ndocker build ./nowhere -t img:1\n```", "./nowhere/Dockerfile: no such file"),
    ("```env\nOPENAI_API_KEY=\"sk-admin-x\"\n```", "the value must be unquoted"),
    ("```crontab\n0 * * * * flock -n /l sh -c './veza_openai.py --dryrun >> log 2>&1'\n```", "--dryrun: not a flag"),
    ("```shell\ncurl https://example.com | sh\n```", "curl: not a program"),
])
def test_the_check_finds_an_unsupported_command(help_flags, block, problem):
    problems = check(help_flags, block).problems
    assert any(problem in found for found in problems), problems


def test_the_image_tags_in_the_readme_are_the_connectors_version():
    tags = re.findall(r"registry\.example\.com/security/veza_openai:(\S+?)[\s'\"`]", README.read_text())
    assert len(tags) >= 4 and set(tags) == {vo.__version__}, tags


def cron_problems(line: str) -> list[str]:
    """What makes a cron line unsafe: a log redirection outside the lock (a skipped tick truncates the running
    job's log), a truncating one, or no word on failure."""
    lexer = shlex.shlex(line.split(None, 5)[5], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    problems = []
    if tokens[:2] != ["flock", "-n"]:
        problems.append("the command does not start with flock -n")
    if any(token in REDIRECTIONS for token in tokens):
        problems.append("a redirection outside the locked command")
    inner = tokens[-1] if tokens[-3:-1] == ["sh", "-c"] else ""
    if re.search(r"(?<![>&\d])>(?!>|&)", inner):
        problems.append("the log is truncated, not appended to")
    if "||" not in inner:
        problems.append("a failed run goes unnoticed")
    return problems


def test_the_cron_line_locks_first_appends_inside_the_lock_and_speaks_up_on_failure():
    blocks = [body for language, body in FENCE.findall(README.read_text()) if language == "crontab"]
    lines = [line for body in blocks for line in body.splitlines() if re.match(r"^[\d*]", line)]
    assert len(lines) == 1 and cron_problems(lines[0]) == []
    assert any(line.startswith("MAILTO=") for body in blocks for line in body.splitlines())
    # the line the README gave before: the shell truncates the log before flock even looks at the lock
    before = ("0 */6 * * * flock -n /run/veza_openai.lock docker run --rm --env-file /etc/veza/openai.env "
              "veza_openai > /var/log/veza_openai.log 2>&1")
    assert "a redirection outside the locked command" in cron_problems(before)
    truncating = "0 * * * * flock -n /l sh -c 'docker run img > /var/log/x.log 2>&1 || echo failed'"
    assert cron_problems(truncating) == ["the log is truncated, not appended to"]
