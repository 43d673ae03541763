"""The documentation holds together: every relative link and anchor resolves, every shell block is valid bash,
every YAML block and file parses, and the README stays a guide an operator reads to the end."""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml
from conftest import NO_ROLE_READS, summary_line
from docs_and_deploy import DEPLOY, README, ROOT, blocks, deploy_files, markdown_files, without_blocks

import veza_openai as vo

SHELL_LANGUAGES = {"shell", "sh", "bash"}
YAML_LANGUAGES = {"yaml", "yml"}
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_LINK = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
# In deploy files (comments), a repository path a reader should open: README.md#..., docs/x.md#..., deploy/...
DEPLOY_REFERENCE = re.compile(r"(?<![\w/.-])((?:README\.md|docs/[\w.-]+\.md|deploy/[\w./-]*[\w-])(?:#[\w-]+)?)")


def rendered_heading(text: str) -> str:
    """A heading's text as GitHub renders it: no code ticks, links as their text, no emphasis or HTML tags."""
    text = INLINE_CODE.sub(lambda m: m.group(2), text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", rendered_heading(heading).strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor GitHub gives a Markdown text: its headings (a repeated one gets -1, -2, ...) and HTML ids."""
    found: set[str] = set()
    for _, heading in HEADING.findall(without_blocks(text)):
        base, n = slug(heading), 0
        while (candidate := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(candidate)
    found |= set(re.findall(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", text, re.IGNORECASE))
    return found


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code blocks and code spans."""
    prose = INLINE_CODE.sub("", without_blocks(text))
    return INLINE_LINK.findall(prose) + REFERENCE_DEFINITION.findall(prose) + HTML_LINK.findall(prose)


def target_problems(source: Path, target: str, root: Path, base: Path | None = None) -> list[str]:
    """Why a relative link from `source` does not resolve (none when it does; absolute URLs are not checked)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        return []
    path_part, _, anchor = urllib.parse.unquote(target).partition("#")
    where = f"{source.relative_to(root)}: {target}"
    resolved = ((base or source.parent) / path_part).resolve() if path_part else source
    if not resolved.is_relative_to(root.resolve()):
        return [f"{where}: points outside the repository"]
    if not resolved.exists():
        return [f"{where}: no such file or directory"]
    if anchor:
        if resolved.suffix.lower() not in (".md", ".markdown"):
            return [f"{where}: an anchor into a file that is not Markdown"]
        if anchor not in anchors(resolved.read_text()):
            return [f"{where}: no heading or anchor #{anchor} in {resolved.name}"]
    return []


def link_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    return [problem for path in files for target in links(path.read_text())
            for problem in target_problems(path, target, root)]


def shell_problems(path: Path) -> list[str]:
    problems = []
    for block in blocks(path.read_text()):
        if block.language in SHELL_LANGUAGES:
            checked = subprocess.run(["bash", "-n"], input=block.body, capture_output=True, text=True)
            if checked.returncode != 0:
                problems.append(f"{block.where(path)}: {checked.stderr.strip()}")
    return problems


def yaml_problems(path: Path) -> list[str]:
    problems = []
    texts = ([(block.where(path), block.body) for block in blocks(path.read_text()) if block.language in YAML_LANGUAGES]
             if path.suffix.lower() in (".md", ".markdown") else [(str(path.relative_to(ROOT)), path.read_text())])
    for where, text in texts:
        try:
            list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            problems.append(f"{where}: {str(error).splitlines()[0]}")
    return problems


# --- the repository's own files ------------------------------------------------------------------------


def test_the_markdown_files_read_are_the_readme_the_changelog_and_docs():
    names = {str(path.relative_to(ROOT)) for path in markdown_files()}
    assert {"README.md", "CHANGELOG.md", "docs/mapping.md", "docs/operations.md", "docs/development.md",
            "docs/rate-limits.md"} <= names, names
    assert not any(name.startswith((".venv", ".git")) for name in names)


def test_every_relative_link_and_anchor_in_the_markdown_files_resolves():
    files = markdown_files()
    assert sum(len(links(path.read_text())) for path in files) > 50, "the links were read"
    assert link_problems(files) == []


def test_every_repository_path_a_deploy_file_names_exists_with_its_anchor():
    problems, seen = [], 0
    for path in deploy_files():
        for reference in DEPLOY_REFERENCE.findall(path.read_text()):
            seen += 1
            problems += target_problems(path, reference, ROOT, base=ROOT)
    assert seen >= 5 and problems == []


def test_every_shell_block_in_the_markdown_files_passes_bash_n():
    files = markdown_files()
    assert sum(block.language in SHELL_LANGUAGES for path in files for block in blocks(path.read_text())) >= 10
    assert [problem for path in files for problem in shell_problems(path)] == []


def test_every_yaml_block_and_yaml_file_parses():
    yaml_files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(yaml_files) >= 2
    assert [problem for path in markdown_files() + yaml_files for problem in yaml_problems(path)] == []


# --- the README is a guide ----------------------------------------------------------------------------

README_ORDER = ("What it does", "Set-up", "Demo", "Quick start", "What to expect in Veza", "Docker", "Cron",
                "Kubernetes", "Configuration", "Exit status", "The summary line", "Rate limits", "Troubleshooting")


def headings(text: str) -> list[tuple[int, str]]:
    return [(len(level), title.strip()) for level, title in HEADING.findall(without_blocks(text))]


def section(text: str, title: str) -> str:
    """A section's text up to the next heading of its level or higher."""
    found = headings(text)
    level = next(level for level, name in found if name == title)
    start = re.search(rf"^#{{{level}}} {re.escape(title)}$", text, re.MULTILINE).end()
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(without_blocks(text), start)
    return text[start:end.start() if end else len(text)]


def test_the_readme_is_at_most_400_lines_and_4500_words():
    text = README.read_text()
    lines, words = len(text.splitlines()), len(text.split())
    assert lines <= 400, f"README.md has {lines} lines; reference belongs in docs/"
    assert words <= 4500, f"README.md has {words} words; reference belongs in docs/"


def test_the_readme_goes_in_the_operators_order_and_opens_with_the_mapping_table():
    titles = [title for _, title in headings(README.read_text())]
    positions = [titles.index(title) for title in README_ORDER if title in titles]
    assert len(positions) == len(README_ORDER), set(README_ORDER) - set(titles)
    assert positions == sorted(positions), titles
    opening = section(README.read_text(), "What it does").strip()
    header = [cell.strip().lower() for cell in opening.splitlines()[0].strip("|").split("|")]
    assert header[0] == "openai" and "oaa" in header[1] and header[2] == "roles", header


def test_the_readmes_rate_limits_section_is_at_most_300_words():
    words = len(section(README.read_text(), "Rate limits").split())
    assert 0 < words <= 300, words


def test_every_summary_field_of_a_run_is_explained_in_the_readme(run_connector, veza):
    """README (The summary line): each key of the `summary:` line has its row; a key the connector adds
    without a word for the operator fails here."""
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert result.returncode == 0, result.output
    keys = [field.split("=", 1)[0] for field in summary_line(result.stderr).split("summary: ", 1)[1].split()]
    table = section(README.read_text(), "The summary line")
    explained = {key for row in table.splitlines() if row.startswith("| `")
                 for key in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert len(keys) > 20 and set(keys) - explained == set(), sorted(set(keys) - explained)


def test_every_option_is_in_the_readmes_configuration_table():
    table = section(README.read_text(), "Configuration")
    rows = [row.split("|")[1:3] for row in table.splitlines() if row.startswith("|")]
    flags = {flag for cell, _ in rows for flag in re.findall(r"(--[a-z][\w-]*)", cell)}
    variables = {name for _, cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)", cell)}
    for option in vo.OPTIONS:
        if option.env and option.flags:
            assert option.env in variables, option.env
        if option.flags:
            assert set(option.flags) & flags, option.flags
    known = {flag for option in vo.OPTIONS for flag in option.flags} | {"--version", "--help"}
    assert flags <= known, flags - known
    assert not any("_" in flag for flag in flags), "the table leads with the hyphenated spellings"


# --- the checks themselves find what they look for ------------------------------------------------------


def test_github_anchors_follow_githubs_rules():
    text = ("# Users (`GET /organization/users`)\n## Set-up\n## Set-up\n### Don't *panic*: it's [fine](x.md)\n"
            "```shell\n# not a heading\n## Set-up\n```\n<a id=\"custom\"></a>\n"
            "## `--save-json` and `OPENAI_MAX_RUN_TIME`\n")
    assert anchors(text) == {"users-get-organizationusers", "set-up", "set-up-1", "dont-panic-its-fine", "custom",
                             "--save-json-and-openai_max_run_time"}


def test_the_link_check_finds_a_missing_file_a_missing_anchor_and_skips_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Sizing\n\n## Time\n")
    (tmp_path / "a.md").write_text(
        "# A\n[ok](docs/b.md#time) [ok](#a) [web](https://example.com/x#y) `[code](nowhere.md)`\n"
        "[gone](docs/c.md) [typo](docs/b.md#timing) [self](#b) [up](../outside.md)\n"
        "```markdown\n[in a block](nowhere.md)\n```\n[ref]: docs/missing.md\n")
    problems = link_problems([tmp_path / "a.md"], tmp_path)
    assert len(problems) == 5, problems
    assert any("docs/c.md: no such file" in p for p in problems)
    assert any("no heading or anchor #timing in b.md" in p for p in problems)
    assert any("#b: no heading or anchor #b in a.md" in p for p in problems)
    assert any("../outside.md: points outside" in p for p in problems)
    assert any("docs/missing.md: no such file" in p for p in problems)


def test_the_shell_and_yaml_checks_find_a_broken_block_also_inside_a_list_item(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("1. step\n\n   ```shell\n   echo 'unclosed\n   ```\n\n```yaml\nkey: [unclosed\n```\n"
                    "```shell\necho fine && ls\n```\n")
    assert len(shell_problems(page)) == 1 and len(yaml_problems(page)) == 1


@pytest.mark.parametrize("text", ["# t\n" + "word " * 4501, "# t\n" + "line\n" * 401])
def test_the_readme_limits_catch_a_long_readme(text, tmp_path, monkeypatch):
    long = tmp_path / "README.md"
    long.write_text(text)
    monkeypatch.setattr(f"{__name__}.README", long)
    with pytest.raises(AssertionError):
        test_the_readme_is_at_most_400_lines_and_4500_words()


def test_an_anchor_into_a_non_markdown_file_is_a_problem(tmp_path):
    (tmp_path / "x.yaml").write_text("a: 1\n")
    (tmp_path / "a.md").write_text("[y](x.yaml#L1)\n")
    problems = link_problems([tmp_path / "a.md"], tmp_path)
    assert problems == ["a.md: x.yaml#L1: an anchor into a file that is not Markdown"]


def test_markdown_files_skip_hidden_directories(tmp_path):
    for name in (".venv/lib/x.md", "docs/a.md", "README.md", "__pycache__/b.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("# x\n")
    assert [str(path.relative_to(tmp_path)) for path in markdown_files(tmp_path)] == ["README.md", "docs/a.md"]
