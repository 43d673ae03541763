"""What the documentation tests read: the Markdown files with their fenced blocks, and the files in deploy/."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
DEPLOY = ROOT / "deploy"
CRONJOB = DEPLOY / "kubernetes" / "cronjob.yaml"
PVC = DEPLOY / "kubernetes" / "payloads-pvc.yaml"
CRON_FILE = DEPLOY / "cron" / "veza-openai.cron"
LOGROTATE = DEPLOY / "cron" / "logrotate.conf"
ENV_EXAMPLE = DEPLOY / "docker" / "openai.env.example"

# A fenced block, also inside a list item (indented up to three spaces); the closing fence matches the opening.
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)"
                   r"^ {0,3}(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)
SKIPPED_DIRECTORIES = {"__pycache__", "node_modules"}


@dataclass
class Block:
    language: str
    body: str
    line: int  # of the opening fence, 1-based

    def where(self, path: Path) -> str:
        return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{self.line}"


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, their indentation removed."""
    found = []
    for match in FENCE.finditer(text):
        indent = len(match.group("indent"))
        body = "".join(line[min(indent, len(line) - len(line.lstrip(" "))):]
                       for line in match.group("body").splitlines(keepends=True))
        found.append(Block(match.group("lang").lower(), body, text.count("\n", 0, match.start()) + 1))
    return found


def without_blocks(text: str) -> str:
    """The text with every fenced block blanked (offsets kept), so a `# comment` in a block is no heading."""
    return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def markdown_files(root: Path = ROOT) -> list[Path]:
    """Every Markdown file of the repository, outside hidden directories (.git, .venv, caches)."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d not in SKIPPED_DIRECTORIES]
        found += [Path(directory) / name for name in files if name.lower().endswith((".md", ".markdown"))]
    return sorted(found)


def deploy_files() -> list[Path]:
    return sorted(path for path in DEPLOY.rglob("*") if path.is_file())


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def cron_file_entries() -> list[tuple[list[str], str, str]]:
    """The cron file's jobs as (schedule fields, user, command)."""
    jobs = []
    for line in CRON_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^[A-Za-z_]\w*=", line):
            fields = line.split(None, 6)
            jobs.append((fields[:5], fields[5], fields[6]))
    return jobs
