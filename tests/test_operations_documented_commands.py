"""Every command the README gives an operator is one the project supports: each connector invocation parses with
the connector's own parser, each variable it names is one the connector (or a library it uses) reads, the files
it names exist, and its Docker, cron and kubectl lines are the ones in deploy/."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess

import pytest
import yaml
from docs_and_deploy import (
    CRON_FILE,
    CRONJOB,
    ENV_EXAMPLE,
    LOGROTATE,
    README,
    ROOT,
    blocks,
    cron_file_entries,
    markdown_files,
    without_blocks,
    yaml_documents,
)

import veza_openai as vo

SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", ">&", "<&", "&>", "&>>"}
SECRET_VARIABLES = {name + suffix for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "VEZA_API_KEY")
                    for suffix in ("", "_FILE")}
# Read by the libraries the connector uses or kept from oaaclient's names, not options of its own. Keep it short.
OUTSIDE_VARIABLES = {"REQUESTS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "OAA_API_RETRIES",
                     "OAA_API_TIMEOUT", "VEZA_UNSAFE_HTTPS"}
# Programs a command may use without further checks: the shell's and the host's own.
HOST_TOOLS = {"[", "jq", "mkdir", "chown", "chmod", "echo", "logger", "cat", "rm", "mail", "printf"}
DOCKER_RUN_OPTIONS_WITH_VALUE = {"-e", "--env", "--env-file", "-v", "--volume", "-u", "--user", "--name", "--mount",
                                 "--network", "-w", "--workdir", "--tmpfs", "--memory", "--cpus"}
INSTALL_OPTIONS_WITH_VALUE = {"-m", "--mode", "-o", "--owner", "-g", "--group", "-t", "--target-directory", "-S"}
OAA_TERMS = {"STRING_LIST", "SOURCE_TO_DESTINATION"}  # an OAA property type and query type, shaped like variables
VARIABLE_NAME = re.compile(r"(?<![\w.-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![\w.-])")


def allowed_variables() -> set[str]:
    return {option.env for option in vo.OPTIONS if option.env} | SECRET_VARIABLES | OUTSIDE_VARIABLES


def connector_flags() -> set[str]:
    return {flag for option in vo.OPTIONS for flag in option.flags} | {"--version", "--help", "-h"}


def parse_problems(args: list[str]) -> list[str]:
    """Why the connector's own parser, or its spelling of the flags, refuses these arguments (none when fine)."""
    problems, errors = [], io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            vo.build_arg_parser().parse_args(args)
    except SystemExit as stop:
        if stop.code not in (0, None):
            message = (errors.getvalue().strip().splitlines() or ["refused"])[-1]
            problems.append(f"{shlex.join(args)}: {message}")
    except Exception as error:  # a parser that raises instead of exiting (exit_on_error=False)
        problems.append(f"{shlex.join(args)}: {error}")
    for arg in args:
        flag = arg.partition("=")[0]
        if flag.startswith("--") and flag not in connector_flags():
            problems.append(f"{flag}: not spelled as any flag of the connector (abbreviated or unknown)")
        elif flag.startswith("--") and "_" in flag:
            problems.append(f"{flag}: the documentation leads with the hyphenated spelling")
    return problems


class Checker:
    """Reads fenced blocks as a user would run them and lists what the project does not support."""

    def __init__(self):
        self.commands: list[list[str]] = []
        self.invocations: list[list[str]] = []  # the connector's arguments, one list per invocation
        self.images: list[str] = []
        self.env_files: list[str] = []
        self.problems: list[str] = []

    def block(self, language: str, text: str) -> None:
        if language in ("shell", "sh", "bash"):
            self.shell(text)
        elif language == "crontab":
            for fields in (line.split(None, 6) for line in text.splitlines()
                           if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)):
                self.shell(fields[6] if len(fields) == 7 and is_cron_user(fields[5]) else " ".join(fields[5:]))
        elif language == "env":
            self.env_file(text)

    def env_file(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, value = line.partition("=")
                self.variable(name)
                if value[:1] in ("'", '"'):
                    self.problems.append(f"{name}: docker --env-file keeps quotes, so the value must be unquoted")
                if "#" in value:
                    self.problems.append(f"{name}: docker --env-file keeps a trailing comment as part of the value")

    def shell(self, text: str) -> None:
        for line in text.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
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
            self.connector(args)
        elif program.endswith("pip"):
            self.pip(args)
        elif program == "docker":
            self.docker(args)
        elif program == "kubectl":
            self.kubectl(args)
        elif program == "sudo":
            self.command(args)
        elif program == "install":
            self.install(args)
        elif program == "flock":
            while args and args[0].startswith("-"):
                args = args[2:] if args[0] in ("-w", "-E", "--timeout", "--conflict-exit-code") else args[1:]
            self.command(args[1:])  # after the lock file
        elif program in ("sh", "bash") and args[:1] == ["-c"]:
            self.shell(args[1])
        elif program not in HOST_TOOLS:
            self.problems.append(f"{program}: not a program the README's commands are known to use")

    def python(self, args: list[str]) -> None:
        if args[:2] in (["-m", "venv"], ["-m", "pytest"]):
            return
        if args[:2] == ["-m", "pip"]:
            return self.pip(args[2:])
        script = args[0]
        self.file(script)
        if script.endswith(("veza_openai.py", "tests/demo.py")):  # the demo passes its flags to the connector
            self.connector(args[1:])

    def connector(self, args: list[str]) -> None:
        self.invocations.append(args)
        self.problems += parse_problems(args)

    def pip(self, args: list[str]) -> None:
        for option, value in zip(args, args[1:]):
            if option in ("-r", "--requirement", "-c", "--constraint"):
                self.file(value)

    def install(self, args: list[str]) -> None:
        operands, i = [], 0
        while i < len(args):
            if args[i] in INSTALL_OPTIONS_WITH_VALUE:
                i += 2
                continue
            if not args[i].startswith("-"):
                operands.append(args[i])
            i += 1
        for source in operands[:-1]:
            self.file(source)
        if operands[-1].startswith("/etc/cron.d/") and "." in operands[-1].rsplit("/", 1)[1]:
            self.problems.append(f"{operands[-1]}: cron skips files in /etc/cron.d whose names contain a dot")

    def docker(self, args: list[str]) -> None:
        if args[0] == "build":
            context = [arg for i, arg in enumerate(args[1:], 1) if not arg.startswith("-")
                       and args[i - 1] not in ("-t", "--tag", "-f", "--file")]
            self.file(f"{context[0]}/Dockerfile")
            self.images += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in ("-t", "--tag")]
        elif args[0] == "run":
            rest = args[1:]
            while rest and rest[0].startswith("-"):
                option, _, inline = rest[0].partition("=")
                value = inline or (rest[1] if option in DOCKER_RUN_OPTIONS_WITH_VALUE else None)
                if option in ("-e", "--env"):
                    self.variable(value.partition("=")[0])
                if option == "--env-file":
                    self.env_files.append(value)
                rest = rest[1:] if inline or option not in DOCKER_RUN_OPTIONS_WITH_VALUE else rest[2:]
            self.images.append(rest[0])
            self.connector(rest[1:])  # after the image
        elif args[0] == "push":
            self.images.append(args[1])
        elif args[0] not in ("tag", "stop", "buildx"):
            self.problems.append(f"docker {args[0]}: not a docker command the README is known to use")

    def kubectl(self, args: list[str]) -> None:
        if args[:1] == ["apply"]:
            for option, value in zip(args, args[1:]):
                if option in ("-f", "--filename"):
                    self.file(value)
        elif args[:3] != ["create", "secret", "generic"]:
            self.problems.append(f"kubectl {' '.join(args[:2])}: not a kubectl command the README is known to use")

    def variable(self, name: str) -> None:
        if name not in allowed_variables():
            self.problems.append(f"{name}: not a variable the connector reads")

    def file(self, path: str) -> None:
        if not (ROOT / path).exists():
            self.problems.append(f"{path}: no such file in the repository")


def is_cron_user(field: str) -> bool:
    """Whether a cron line's sixth field is the user of an /etc/cron.d line rather than the command's program."""
    programs = HOST_TOOLS | {"flock", "docker", "sh", "bash", "sudo", "kubectl", "install", "export", "python3"}
    return re.fullmatch(r"[a-z_][a-z0-9_-]*", field) is not None and field not in programs


def check(markdown: str) -> Checker:
    checker = Checker()
    for block in blocks(markdown):
        checker.block(block.language, block.body)
    return checker


@pytest.fixture(scope="module")
def readme() -> Checker:
    return check(README.read_text())


def kubectl_commands(text: str) -> list[list[str]]:
    """The kubectl commands of a Markdown text: lines of its shell blocks, and code spans in its prose."""
    lines = [line.strip() for block in blocks(text) if block.language in ("shell", "sh", "bash")
             for line in block.body.splitlines()]
    lines += re.findall(r"`(kubectl [^`]+)`", without_blocks(text))
    return [shlex.split(line) for line in lines if line.startswith("kubectl ")]


def cronjob() -> dict:
    return next(doc for doc in yaml_documents(CRONJOB) if doc.get("kind") == "CronJob")


def container() -> dict:
    return cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


# --- the README's commands ----------------------------------------------------------------------------


def test_every_command_in_the_readme_is_supported_and_every_connector_invocation_parses(readme):
    assert readme.problems == []
    seen = {" ".join(argv[:2]) for argv in readme.commands}
    # the commands an operator runs were all read, so an empty or unparsed README cannot pass
    assert {"python3 -m", ".venv/bin/pip install", ".venv/bin/python tests/demo.py", ".venv/bin/python veza_openai.py",
            "docker build", "docker push", "docker run", "flock -n", "export OPENAI_ORG_ID=org-your_organization_id",
            "kubectl create", "sudo install", "jq .applications[0].local_users[] | select(.is_active == false) | .name",
            } <= seen, seen
    assert len(readme.invocations) >= 6
    assert ["--dry-run", "--save-json", "payload.json"] in readme.invocations


def test_every_variable_the_readme_and_docs_name_is_one_the_connector_reads():
    """Every variable an operator's page names is an option's, a secret's or one of the few read outside the
    connector's options (the CHANGELOG may name what a version removed; development.md names code)."""
    named = set(VARIABLE_NAME.findall(README.read_text()))
    assert {"OPENAI_ORG_ID", "OPENAI_API_KEY_FILE", "VEZA_URL", "OPENAI_MAX_RUN_TIME"} <= named
    assert named - allowed_variables() == set()
    for path in markdown_files():
        if path.name not in ("CHANGELOG.md", "development.md"):
            assert set(VARIABLE_NAME.findall(path.read_text())) - allowed_variables() - OAA_TERMS == set(), path


def test_the_deploy_files_use_only_variables_the_connector_reads_and_flags_its_parser_takes():
    checker = Checker()
    checker.env_file(ENV_EXAMPLE.read_text())
    for _, _, command in cron_file_entries():
        checker.shell(command)
    for entry in container()["env"]:
        checker.variable(entry["name"])
    # args: in the CronJob and in the YAML blocks of the docs (the saved-payloads volume)
    documents = yaml_documents(CRONJOB) + [doc for path in markdown_files() for block in blocks(path.read_text())
                                          if block.language in ("yaml", "yml")
                                          for doc in yaml.safe_load_all(block.body) if isinstance(doc, dict)]
    arg_lists = [found for doc in documents for found in find_key(doc, "args")]
    assert arg_lists, "the docs show the args that keep saved payloads"
    for args in arg_lists:
        checker.connector(args)
    assert checker.problems == []
    assert len(checker.invocations) >= 2


def find_key(node, key: str) -> list:
    if isinstance(node, dict):
        return [value for name, value in node.items() if name == key] + [
            found for value in node.values() for found in find_key(value, key)]
    if isinstance(node, list):
        return [found for item in node for found in find_key(item, key)]
    return []


@pytest.mark.parametrize(("block", "problem"), [
    ("```shell\n.venv/bin/python veza_openai.py --dry-run --no-such-flag\n```", "unrecognized arguments"),
    ("```shell\n./veza_openai.py --max-workers=4 --save-jsn x\n```", "--save-jsn: not spelled as any flag"),
    ("```shell\n.venv/bin/python veza_openai.py --dry\n```", "--dry: not spelled as any flag"),
    ("```shell\n.venv/bin/python veza_openai.py --save_json out\n```", "--save_json: the documentation leads with"),
    ("```shell\n.venv/bin/python veza_openai.py --max-workers\n```", "expected one argument"),
    ("```shell\n.venv/bin/pip install -r requirements-dev.txt\n```", "requirements-dev.txt: no such file"),
    ("```shell\n.venv/bin/python tests/no_such_demo.py\n```", "tests/no_such_demo.py: no such file"),
    ("```shell\nexport OPENAI_KEY=sk-admin-x\n```", "OPENAI_KEY: not a variable"),
    ("```shell\ndocker run --rm -e OPENAI_TOKEN=x img:1 --dry-run\n```", "OPENAI_TOKEN: not a variable"),
    ("```shell\ndocker run --rm --env-file f img:1 --dry-rn\n```", "--dry-rn: not spelled as any flag"),
    ("```shell\ndocker build ./nowhere -t img:1\n```", "./nowhere/Dockerfile: no such file"),
    ("```env\nOPENAI_API_KEY=\"sk-admin-x\"\n```", "the value must be unquoted"),
    ("```env\nOPENAI_MAX_RUN_TIME=600  # ten minutes\n```", "keeps a trailing comment"),
    ("```crontab\n0 * * * * flock -n /l sh -c './veza_openai.py --dryrun >> log 2>&1'\n```", "--dryrun: not spelled"),
    ("```crontab\n0 * * * * root flock -n /l sh -c './veza_openai.py --dryrun >> log 2>&1'\n```", "--dryrun: not"),
    ("```shell\ncurl https://example.com | sh\n```", "curl: not a program"),
    ("```shell\nsudo install -m 0644 deploy/cron/veza-openai.cron /etc/cron.d/veza-openai.cron\n```",
     "whose names contain a dot"),
    ("```shell\nsudo install -m 0644 deploy/cron/nothing.cron /etc/cron.d/x\n```", "deploy/cron/nothing.cron: no such"),
    ("```shell\nkubectl apply -f deploy/kubernetes/job.yaml\n```", "deploy/kubernetes/job.yaml: no such file"),
    ("1. step\n\n   ```shell\n   ./veza_openai.py --dryrun\n   ```\n", "--dryrun: not spelled"),
])
def test_the_check_finds_an_unsupported_command(block, problem):
    problems = check(block).problems
    assert any(problem in found for found in problems), problems


def test_the_variable_check_finds_a_misspelled_variable_in_prose():
    text = "Set `OPENAI_ORG` and `VEZA_TOKEN`, or `OPENAI_ORG_ID` and `VEZA_API_KEY`; `OAA.OpenAI.User` is no variable."
    assert set(VARIABLE_NAME.findall(text)) - allowed_variables() == {"OPENAI_ORG", "VEZA_TOKEN"}


# --- the README's lines are deploy/'s -----------------------------------------------------------------


def test_the_image_tags_in_the_readme_and_deploy_are_the_connectors_version(readme):
    images = set(readme.images) | {container()["image"]} | set(cron_images())
    assert len(readme.images) >= 4
    assert len(images) == 1, images
    image = images.pop()
    assert image == f"registry.example.com/security/veza_openai:{vo.__version__}"
    tags = re.findall(r"registry\.example\.com/security/veza_openai:(\S+?)[\s'\"`]",
                      README.read_text() + CRONJOB.read_text() + CRON_FILE.read_text())
    assert len(tags) >= 6 and set(tags) == {vo.__version__}, tags


def cron_images() -> list[str]:
    checker = Checker()
    for _, _, command in cron_file_entries():
        checker.shell(command)
    return checker.images


def test_the_readmes_cron_line_is_the_cron_files_and_uses_the_readmes_env_file(readme):
    readme_lines = [line for block in blocks(README.read_text()) if block.language == "crontab"
                    for line in block.body.splitlines() if re.match(r"^[\d*]", line)]
    file_lines = [line for line in CRON_FILE.read_text().splitlines() if re.match(r"^[\d*]", line)]
    assert len(file_lines) == 1 and readme_lines == file_lines
    cron = Checker()
    cron.shell(cron_file_entries()[0][2])
    assert set(cron.env_files) == set(readme.env_files) == {"/etc/veza/openai.env"}
    # the env file is made from the example, installed where docker run reads it
    installs = [argv for argv in readme.commands if argv[:2] == ["sudo", "install"] and str(
        ENV_EXAMPLE.relative_to(ROOT)) in argv]
    assert len(installs) == 1 and installs[0][-1] == "/etc/veza/openai.env"
    assert "/etc/veza/openai.env" in ENV_EXAMPLE.read_text()


def test_the_readme_installs_the_cron_file_and_its_logrotate_rule_where_they_are_read(readme):
    installs = {argv[-2]: argv[-1] for argv in readme.commands if argv[:2] == ["sudo", "install"]}
    assert installs[str(CRON_FILE.relative_to(ROOT))] == "/etc/cron.d/veza-openai"
    assert installs[str(LOGROTATE.relative_to(ROOT))] == "/etc/logrotate.d/veza-openai"


def test_the_readmes_kubectl_lines_name_deploys_manifest_and_the_secret_it_mounts():
    commands = kubectl_commands(README.read_text())
    checker = Checker()
    for argv in commands:
        checker.command(argv)
    assert checker.problems == []
    applied = [argv[argv.index("-f") + 1] for argv in commands if argv[1:2] == ["apply"]]
    assert applied == [str((CRONJOB.parent / "state-pvc.yaml").relative_to(ROOT)), str(CRONJOB.relative_to(ROOT))]
    created = [argv for argv in commands if argv[1:4] == ["create", "secret", "generic"]]
    assert len(created) == 1
    name, keys = created[0][4], sorted(re.findall(r"--from-file=([\w.-]+)=\S+", " ".join(created[0])))
    pod = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    secret_volumes = [volume for volume in pod["volumes"] if "secret" in volume]
    assert [volume["secret"]["secretName"] for volume in secret_volumes] == [name]
    mount = next(m["mountPath"] for m in container()["volumeMounts"] if m["name"] == secret_volumes[0]["name"])
    files = {entry["name"]: entry["value"] for entry in container()["env"] if entry["name"].endswith("_FILE")}
    assert sorted(path.rsplit("/", 1)[1] for path in files.values()) == keys
    assert all(path.rsplit("/", 1)[0] == mount for path in files.values())


# --- the cron line ------------------------------------------------------------------------------------


def cron_problems(command: str) -> list[str]:
    """What makes a cron command unsafe: a log redirection outside the lock (a skipped tick truncates the running
    job's log), a truncating one, no word on failure, or a bare % (cron turns it into a newline)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
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
    if re.search(r"(?<!\\)%", command):
        problems.append("a % that cron would turn into a newline")
    for text in (command, inner):
        checked = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        if checked.returncode != 0:
            problems.append(f"bash -n: {checked.stderr.strip()}")
    return problems


def test_the_cron_file_is_for_cron_d_locks_first_appends_inside_the_lock_and_speaks_up_on_failure():
    jobs = cron_file_entries()
    assert len(jobs) == 1
    _, user, command = jobs[0]
    assert user == "root", "a /etc/cron.d line names its user after the schedule"
    assert "/etc/cron.d" in CRON_FILE.read_text()
    assert cron_problems(command) == []
    assignments = dict(re.findall(r"^([A-Z]+)=(.*)$", CRON_FILE.read_text(), re.MULTILINE))
    assert assignments.get("MAILTO") and "/usr/bin" in assignments.get("PATH", "")


def test_the_logrotate_rule_rotates_the_log_the_cron_line_appends_to():
    appended = re.findall(r">>\s*(\S+)", cron_file_entries()[0][2])
    rule = LOGROTATE.read_text()
    rotated = re.findall(r"^(/\S+)\s*\{", rule, re.MULTILINE)
    assert appended == rotated == ["/var/log/veza_openai.log"]
    directives = {line.split()[0] for line in rule.splitlines() if line.startswith("    ") and line.strip()}
    # moved, not copied and truncated: a running job keeps writing to the moved file, losing nothing
    assert "copytruncate" not in directives and {"rotate", "delaycompress", "missingok"} <= directives


def test_the_cron_check_finds_each_unsafe_line():
    before = ("flock -n /run/veza_openai.lock docker run --rm --env-file /etc/veza/openai.env "
              "veza_openai > /var/log/veza_openai.log 2>&1")
    assert "a redirection outside the locked command" in cron_problems(before)
    truncating = "flock -n /l sh -c 'docker run img > /var/log/x.log 2>&1 || echo failed'"
    assert cron_problems(truncating) == ["the log is truncated, not appended to"]
    dated = "flock -n /l sh -c 'docker run img >> /var/log/x-$(date +%F).log 2>&1 || echo failed'"
    assert cron_problems(dated) == ["a % that cron would turn into a newline"]
    silent = "flock -n /l sh -c 'docker run img >> /var/log/x.log 2>&1'"
    assert cron_problems(silent) == ["a failed run goes unnoticed"]
    broken = "flock -n /l sh -c 'docker run img >> /var/log/x.log 2>&1 || echo \"failed'"
    assert any(problem.startswith("bash -n") for problem in cron_problems(broken))
