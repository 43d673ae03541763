"""Fixtures: the fake OpenAI Admin API, the fake Veza over HTTPS, and running the script as a user does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI, demo_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402

SCRIPT = ROOT / "veza_openai.py"
# Recognisable fake secrets: a test asserts neither ever reaches output or files.
OPENAI_SECRET = "sk-admin-TESTSECRET-openai-77"
VEZA_SECRET = "veza-TESTSECRET-token-88"


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


@pytest.fixture
def openai_fake():
    fake = FakeOpenAI(demo_organization(), admin_key=OPENAI_SECRET).start()
    yield fake
    fake.stop()


@pytest.fixture
def veza(ca):
    fake = FakeVeza(ca[0], api_key=VEZA_SECRET).start()
    yield fake
    fake.stop()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def saved_json(self) -> list[Path]:
        return sorted(self.cwd.rglob("*.json"))


@pytest.fixture
def run_connector(tmp_path, ca, openai_fake, veza):
    """Run ./veza_openai.py in a subprocess with a clean environment pointing at the fakes."""

    def run(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (), timeout: float = 90) -> Run:
        environment = {
            # the venv's python first, as after `source .venv/bin/activate`
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "REQUESTS_CA_BUNDLE": ca[1],
            "OAA_API_RETRIES": "0",
            "VEZA_OPENAI_TIME_SCALE": "0.001",
            "VEZA_URL": veza.url,
            "VEZA_API_KEY": VEZA_SECRET,
            "OPENAI_ORG_ID": openai_fake.org.org_id,
            "OPENAI_API_KEY": OPENAI_SECRET,
            "OPENAI_BASE_URL": openai_fake.base_url,
        }
        environment.update(env or {})
        for name in drop:
            environment.pop(name, None)
        done = subprocess.run([str(SCRIPT), *args], env=environment, cwd=tmp_path, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return Run(done.returncode, done.stdout, done.stderr, tmp_path)

    return run


def application(payload: dict) -> dict:
    return payload["applications"][0]


def by_id(entities: list[dict]) -> dict[str, dict]:
    return {entity["id"]: entity for entity in entities}


def assignments(payload: dict, identity: str) -> dict[str, dict]:
    """role id -> assignment for one identity in a pushed payload."""
    for entry in payload["identity_to_permissions"]:
        if entry["identity"] == identity:
            return {a["role"]: a for a in entry.get("role_assignments", [])}
    return {}


def load(path: Path) -> dict:
    return json.loads(path.read_text())
