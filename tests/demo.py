#!/usr/bin/env python3
"""Try the connector without credentials: start the bundled fakes and run the real script against them.

    python tests/demo.py                    # prints the connector's log, what the fake Veza received, who reaches
                                            # one project by which path (tests/access_paths.py), the JSON path
    python tests/demo.py --create-report    # any connector flags pass through; this one also shows the report
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from access_paths import describe  # noqa: E402
from fake_openai import FakeOpenAI, demo_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402

HELP = """usage: python tests/demo.py [CONNECTOR FLAGS ...]

Try the connector without credentials: start the bundled fake OpenAI Admin API (a demo organization of
120 users) and a fake Veza on 127.0.0.1, run ./veza_openai.py against them, then show what the fake Veza
received, that it matches the connector's summary line, and where the payload JSON was saved. Nothing
leaves this machine and no real key is used.

Any flags are passed through to the connector (see ./veza_openai.py --help), for example:
  python tests/demo.py --create-report      # also creates the 'OpenAI access review' report in the fake Veza
"""
DEMO_PROJECT = "proj_alpha"


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(HELP, end="")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="veza-openai-demo-"))
    ca = trustme.CA()
    ca_file = workdir / "fake-veza-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    openai_fake = FakeOpenAI(demo_organization(), admin_key="sk-admin-demo-key").start()
    veza = FakeVeza(ca, api_key="veza-demo-key").start()
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "REQUESTS_CA_BUNDLE": str(ca_file),
        "OPENAI_ORG_ID": openai_fake.org.org_id,
        "OPENAI_API_KEY": "sk-admin-demo-key",
        "OPENAI_BASE_URL": openai_fake.base_url,
        "VEZA_URL": veza.url,
        "VEZA_API_KEY": "veza-demo-key",
    }
    payload_file = workdir / "payload.json"
    try:
        returncode, log = run_and_echo([str(HERE.parent / "veza_openai.py"), "--save-json", str(payload_file),
                                        *sys.argv[1:]], env)
    finally:
        openai_fake.stop()
        veza.stop()
    if returncode != 0 or not veza.pushes:
        print(f"demo failed: the connector exited {returncode}", file=sys.stderr)
        return 1
    app = veza.pushes[0]["payload"]["applications"][0]
    counted = payload_counts(app)
    print(f"\nfake Veza received one push to data source {veza.data_source_names()[0]!r}: "
          f"{len(app['local_users'])} identities, {len(app['local_roles'])} roles, "
          f"{len(app['local_access_creds'])} credentials, "
          f"{len(app['resources'])} top-level resources (projects and organization certificates)")
    print("counted in the payload: " + " ".join(f"{name}={value}" for name, value in counted.items()))
    summary = summary_fields(log)
    differ = {name: (value, summary.get(name)) for name, value in counted.items() if summary.get(name) != str(value)}
    if differ:
        print(f"demo failed: the payload and the summary line differ (payload, summary): {differ}", file=sys.stderr)
        return 1
    print("the same as the summary line")
    # Who reaches one project, by each path Veza follows in the payload (a direct role, a group's role, the
    # implicit ownership of organization owners, organization roles and admin keys that apply to every
    # project, keys and federation rules acting with their owner's roles).
    print(describe(veza.pushes[0]["payload"], DEMO_PROJECT))
    print(f"the payload is at {payload_file} ({payload_file.stat().st_size:,} bytes); "
          f"first user: {json.dumps(app['local_users'][0])}")
    for report in veza.reports:
        print(f"fake Veza holds the report {report['name']!r} with {len(report['queries'])} saved queries:")
        for name in veza.report_queries(report["name"]):
            query = next(q for q in veza.queries if q["name"] == name)
            print(f"  - {name}: {json.dumps(query['source_node_types'])}")
    return 0


def run_and_echo(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the connector, passing its log through to this terminal as it comes, and keep the log."""
    with subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        lines = []
        for line in process.stderr:
            sys.stderr.write(line)
            lines.append(line)
    return process.returncode, "".join(lines)


def summary_fields(log: str) -> dict[str, str]:
    """The fields of the connector's summary line (the last line of its log, text or JSON), as text."""
    last = log.strip().splitlines()[-1]
    if last.startswith("{"):
        return {name: str(value) for name, value in json.loads(last).items()}
    return dict(field.split("=", 1) for field in last.split("summary: ", 1)[1].split() if "=" in field)


def payload_counts(app: dict) -> dict[str, int]:
    """What the payload holds, counted under the summary's names: an identity, a resource or a credential is
    counted by what it is (a certificate is not a project, a federation rule is not an API key)."""
    users, creds, resources = app["local_users"], app["local_access_creds"], app["resources"]

    def props(item: dict) -> dict:
        return item.get("custom_properties") or {}

    federation = [c for c in creds if "workload_identity_provider_id" in props(c)]
    project_keys = [c for c in creds if "project_id" in props(c) and c not in federation]
    return {
        "projects": sum(r["resource_type"] == "project" for r in resources),
        "certificates": sum(r["resource_type"] == "certificate" for r in resources)
        + sum(s["resource_type"] == "certificate" for r in resources for s in r.get("sub_resources") or []),
        "groups": len(app["local_groups"]),
        "service_accounts": sum(u.get("user_type") == "service_account" and "project_id" in props(u) for u in users),
        "invites_pending": sum(props(u).get("invite_status") == "pending" for u in users),
        "project_api_keys_active": sum(bool(c["is_active"]) for c in project_keys),
        "project_api_keys_inactive": sum(not c["is_active"] for c in project_keys),
        "admin_api_keys": len(creds) - len(project_keys) - len(federation),
        "federation_rules": len(federation),
    }


if __name__ == "__main__":
    sys.exit(main())
