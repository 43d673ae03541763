"""The Kubernetes files in deploy/kubernetes agree with the Dockerfile and the connector: one run at a time, keys
mounted as files the image's non-root user reads, a read-only root, and a volume for saved payloads."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml
from docs_and_deploy import CRONJOB, DEPLOY, OPERATIONS, PVC, ROOT, blocks, yaml_documents

import veza_openai as vo

DOCKERFILE = ROOT / "Dockerfile"


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


def dockerfile_home(path: Path) -> str:
    """The Dockerfile's last WORKDIR: where a bare --save-json writes."""
    return re.findall(r"^WORKDIR\s+(\S+)$", path.read_text(), re.MULTILINE)[-1]


@pytest.fixture(scope="module")
def cronjob() -> dict:
    jobs = [doc for doc in yaml_documents(CRONJOB) if doc.get("kind") == "CronJob"]
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


def test_one_run_at_a_time_and_no_pod_retries(cronjob):
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_the_connector_accepts_the_manifests_settings_and_stops_before_the_job_deadline(cronjob, container,
                                                                                       tmp_path):
    env = {entry["name"]: entry["value"] for entry in container["env"]}
    for name in ("OPENAI_API_KEY_FILE", "VEZA_API_KEY_FILE"):  # the mounted files, here in a temporary directory
        key_file = tmp_path / PurePosixPath(env[name]).name
        key_file.write_text(("sk-admin-kubernetes-" if "OPENAI" in name else "veza-kubernetes-") + "1234567890\n")
        key_file.chmod(0o600)
        env[name] = str(key_file)
    env.update(OPENAI_ORG_ID="org-kubernetes", VEZA_URL="https://veza.example.com")
    config = vo.load_config([], env)
    dest = next(option.dest for option in vo.OPTIONS if option.env == "OPENAI_MAX_RUN_TIME")
    max_run_time = float(env["OPENAI_MAX_RUN_TIME"])
    assert float(getattr(config, dest)) == max_run_time  # the connector takes the value as the manifest means it
    # the connector ends a too-slow run itself, with its summary, a minute or more before Kubernetes kills it
    assert cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] >= max_run_time + 60


def test_the_secret_is_mounted_as_files_and_the_file_variables_point_into_it(pod, container):
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    secret_volumes = [v for v in volumes.values() if "secret" in v]
    assert len(secret_volumes) == 1 and secret_volumes[0]["secret"]["secretName"] == "veza-openai"
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
    for name in ("OPENAI_API_KEY_FILE", "VEZA_API_KEY_FILE"):
        assert PurePosixPath(env[name]["value"]).parent == mount
    for name in ("OPENAI_ORG_ID", "VEZA_URL"):
        assert env[name]["value"]
    assert env["LOG_FORMAT"]["value"] == "json"


def test_no_deploy_file_holds_a_secret():
    """Keys never sit in a YAML file that could be committed, nor does a placeholder Secret that a
    `kubectl apply -f deploy/kubernetes/` would put over the real one."""
    documents = [doc for path in sorted(DEPLOY.rglob("*.y*ml")) for doc in yaml_documents(path)]
    assert documents and not [doc for doc in documents if doc.get("kind") == "Secret"]
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not re.search(r"sk-(?:admin|proj|svcacct)-[A-Za-z0-9_-]{12,}", path.read_text()), path


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
    assert pod["automountServiceAccountToken"] is False


def test_tmp_and_the_home_directory_are_writable_volumes(pod, container):
    empty = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounted["/tmp"] in empty
    assert mounted[dockerfile_home(DOCKERFILE)] in empty, "a bare --save-json writes the home directory"


def test_the_images_entrypoint_is_not_overridden(container):
    entrypoint = dockerfile_entrypoint(DOCKERFILE)
    assert entrypoint[-1].endswith("veza_openai.py")
    assert "command" not in container, f"a command: would replace the image's ENTRYPOINT {entrypoint}"
    assert not container.get("args"), "no flags are needed: the settings come from the environment"
    image, _, tag = container["image"].rpartition(":")
    assert image.split("/")[-1] == "veza_openai" and "/" in image, "an image in your registry, not a local one"
    assert tag == vo.__version__, "a versioned tag: the version that was built and pushed"


def test_the_saved_payloads_claim_replaces_the_home_directorys_volume(pod, container):
    """docs/operations.md (Keeping saved payloads): the claim in deploy/, mounted in place of the volume the
    home directory is on, and --save-json pointed there."""
    claims = [doc for doc in yaml_documents(PVC) if doc.get("kind") == "PersistentVolumeClaim"]
    assert len(claims) == 1 and claims[0]["spec"]["resources"]["requests"]["storage"]
    snippets = [doc for block in blocks(OPERATIONS.read_text()) if block.language == "yaml"
                for doc in yaml.safe_load_all(block.body) if isinstance(doc, dict) and "volumes" in doc]
    assert len(snippets) == 1
    (volume,) = snippets[0]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claims[0]["metadata"]["name"]
    home = dockerfile_home(DOCKERFILE)
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[volume["name"]] == home
    assert volume["name"] in {v["name"] for v in pod["volumes"]}
    args = snippets[0]["args"]
    assert args[args.index("--save-json") + 1] == home
