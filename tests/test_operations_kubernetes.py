"""The Kubernetes CronJob example is valid YAML and agrees with the Dockerfile and the connector."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml
from conftest import ROOT

import veza_openai as vo

MANIFEST = ROOT / "README.md"  # the ```yaml blocks of its Kubernetes section
DOCKERFILE = ROOT / "Dockerfile"
FENCE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def yaml_documents(path: Path) -> list[dict]:
    """Every YAML document in a .yaml file, or in the ```yaml fenced blocks of a Markdown file."""
    text = path.read_text()
    blocks = FENCE.findall(text) if path.suffix.lower() in (".md", ".markdown") else [text]
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc is not None]


def dockerfile_user(path: Path) -> tuple[int, int | None]:
    """The uid (and gid) of the Dockerfile's last USER instruction, which must be numeric."""
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid) if gid else None


def dockerfile_entrypoint(path: Path) -> list[str]:
    """The Dockerfile's last ENTRYPOINT, which must be in exec (JSON array) form."""
    entries = re.findall(r"^ENTRYPOINT\s+(.+)$", path.read_text(), re.MULTILINE)
    assert entries, "the Dockerfile has no ENTRYPOINT"
    entrypoint = json.loads(entries[-1])
    assert isinstance(entrypoint, list) and all(isinstance(part, str) for part in entrypoint)
    return entrypoint


def quantity(value: str | int) -> int:
    """A Kubernetes memory quantity in bytes: 256Mi, 1Gi, 512M, 1000000."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", str(value))
    assert match, f"not a memory quantity: {value!r}"
    return int(match.group(1)) * UNITS[match.group(2) or ""]


def kind(docs: list[dict], name: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == name]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return yaml_documents(MANIFEST)


@pytest.fixture(scope="module")
def cronjob(docs) -> dict:
    jobs = kind(docs, "CronJob")
    assert len(jobs) == 1
    assert jobs[0]["apiVersion"] == "batch/v1" and jobs[0]["metadata"]["name"] == "veza-openai"
    return jobs[0]


@pytest.fixture(scope="module")
def pod(cronjob) -> dict:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def test_markdown_blocks_are_read_like_a_yaml_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("text\n```yaml\nkind: A\n---\nkind: B\n```\n```bash\nkind: C\n```\n```yml\nkind: D\n```\n")
    assert [doc["kind"] for doc in yaml_documents(readme)] == ["A", "B", "D"]


def test_one_run_at_a_time_and_no_pod_retries(cronjob):
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_the_job_deadline_exceeds_the_connectors_own(cronjob, container):
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    max_run_time = float(env["OPENAI_MAX_RUN_TIME"])
    config = vo.load_config([], {"OPENAI_ORG_ID": "org-x", "OPENAI_API_KEY": "sk-admin-kubernetes-1",
                                 "VEZA_URL": "veza.example.com", "VEZA_API_KEY": "veza-kubernetes-1",
                                 "OPENAI_MAX_RUN_TIME": env["OPENAI_MAX_RUN_TIME"]})
    assert config.max_run_time == max_run_time  # the connector takes the value as the manifest means it
    # the connector ends a too-slow run itself, with its summary, a minute or more before Kubernetes kills it
    assert cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] >= max_run_time + 60


# The sizing rule the README states beside the manifest, term by term.
SIZING_RULE = (
    "reading minutes       = max(projects / 7, users / 60, project memberships / 60)",
    "OPENAI_MAX_RUN_TIME   = 1.5 x reading minutes x 60 + 1800",
    "activeDeadlineSeconds = OPENAI_MAX_RUN_TIME + 600",
)


def sized_deadlines(projects: int, users: int, memberships: int, role_assignments_read: bool) -> tuple[float, float]:
    """OPENAI_MAX_RUN_TIME and activeDeadlineSeconds by the README's rule."""
    per_principal = (users / 60, memberships / 60) if role_assignments_read else (0, 0)
    reading_minutes = max(projects / 7, *per_principal)
    max_run_time = 1.5 * reading_minutes * 60 + 1800
    return max_run_time, max_run_time + 600


def test_the_readme_states_the_sizing_rule_the_test_applies():
    text = MANIFEST.read_text()
    for line in SIZING_RULE:
        assert line in text, line
    assert sized_deadlines(100, 0, 0, False) == pytest.approx((3085.7, 3685.7), abs=0.1)  # the README's example
    assert "3,086 s and 3,686 s" in text
    assert sized_deadlines(2000, 20000, 20000, True) == (31800, 32400)


def test_the_manifests_deadlines_follow_the_sizing_rule_for_the_organization_it_is_sized_for(cronjob, container):
    sizing = cronjob["metadata"]["annotations"]
    max_run_time, deadline = sized_deadlines(int(sizing["sizing/projects"]), int(sizing["sizing/users"]),
                                             int(sizing["sizing/project-memberships"]),
                                             sizing["sizing/role-assignments-read"] == "true")
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    manifest_run_time = float(env["OPENAI_MAX_RUN_TIME"])
    manifest_deadline = cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert max_run_time <= manifest_run_time <= max_run_time + 600, "rounded up, not past the rule"
    assert manifest_deadline == manifest_run_time + 600 >= deadline
    # the run ends before the next one is due: the schedule runs once a day
    minute, hour, *every_day = cronjob["spec"]["schedule"].split()
    assert every_day == ["*", "*", "*"] and minute.isdigit() and hour.isdigit()
    assert manifest_deadline + cronjob["spec"]["startingDeadlineSeconds"] < 24 * 3600


def test_the_rule_sizes_a_large_organization_past_two_hours():
    # a fixed 7,200 s deadline would stop every run at about 770 projects at 7 requests a minute, while the
    # README estimates 4.8 hours for 2,000
    max_run_time, _ = sized_deadlines(2000, 0, 0, False)
    assert max_run_time > 2000 / 7 * 60 > 7200


def test_the_secret_is_mounted_as_files_and_the_file_variables_point_into_it(docs, pod, container):
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    secret_volumes = [v for v in volumes.values() if "secret" in v]
    assert len(secret_volumes) == 1
    secret_name = secret_volumes[0]["secret"]["secretName"]
    mounts = [m for m in container["volumeMounts"] if m["name"] == secret_volumes[0]["name"]]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    mode = secret_volumes[0]["secret"].get("defaultMode", 0o644)
    assert not mode & 0o007, "the key files are not world-readable"
    # Secret files are owned by root and the fsGroup: a non-root user reads them through that group.
    assert mode & 0o040 and pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"]
    mount = PurePosixPath(mounts[0]["mountPath"])
    assert mount == PurePosixPath("/var/run/secrets/veza-openai")

    env = {item["name"]: item for item in container["env"]}
    assert "OPENAI_API_KEY" not in env and "VEZA_API_KEY" not in env, "keys go in files, not the environment"
    files = {name: PurePosixPath(env[name]["value"]) for name in ("OPENAI_API_KEY_FILE", "VEZA_API_KEY_FILE")}
    for path in files.values():
        assert path.parent == mount
    for name in ("OPENAI_ORG_ID", "VEZA_URL"):
        assert env[name]["value"]
    assert env["LOG_FORMAT"]["value"] == "json"

    assert kind(docs, "Secret") == [], "keys never sit in the YAML: the Secret is made from files"
    created = re.findall(r"^kubectl create secret generic (\S+) (.+)$", MANIFEST.read_text(), re.MULTILINE)
    assert len(created) == 1 and created[0][0] == secret_name
    keys = re.findall(r"--from-file=([\w.-]+)=\S+", created[0][1])
    assert sorted(keys) == sorted(path.name for path in files.values())


def test_the_pod_runs_as_the_images_non_root_user_on_a_read_only_root(pod, container):
    uid, gid = dockerfile_user(DOCKERFILE)
    assert uid != 0
    effective = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert effective["runAsNonRoot"] is True
    assert effective["runAsUser"] == uid
    if gid is not None:
        assert effective["runAsGroup"] == gid
    assert effective["seccompProfile"]["type"] == "RuntimeDefault"
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]


def test_tmp_is_a_writable_empty_dir(pod, container):
    empty = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    assert any(m["mountPath"] == "/tmp" and m["name"] in empty for m in container["volumeMounts"])


def test_memory_fits_the_benchmarks_peak(container):
    resources = container["resources"]
    request = quantity(resources["requests"]["memory"])
    limit = quantity(resources["limits"]["memory"])
    assert request >= 454 * 1000**2, "the 100,000-user benchmark peaks at 454 MB; the request covers it"
    assert limit >= 1.5 * request, "the limit leaves half again for an organization larger than measured"


def test_the_images_entrypoint_is_not_overridden(container):
    entrypoint = dockerfile_entrypoint(DOCKERFILE)
    assert entrypoint[-1].endswith("veza_openai.py")
    assert "command" not in container, f"a command: would replace the image's ENTRYPOINT {entrypoint}"
    assert not container.get("args"), "no flags are needed: the settings come from the environment"
    image, _, tag = container["image"].rpartition(":")
    assert image.split("/")[-1] == "veza_openai" and "/" in image, "an image in your registry, not a local one"
    assert tag == vo.__version__, "a versioned tag: the version that was built and pushed"
