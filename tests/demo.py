#!/usr/bin/env python3
"""Try the connector without credentials: start the bundled fakes and run the real script against them.

    python tests/demo.py                    # prints the connector's log, what the fake Veza received, the JSON path
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

from fake_openai import FakeOpenAI, demo_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402


def main() -> int:
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
        done = subprocess.run([str(HERE.parent / "veza_openai.py"), "--save_json", str(payload_file),
                               *sys.argv[1:]], env=env, stdin=subprocess.DEVNULL)
    finally:
        openai_fake.stop()
        veza.stop()
    if done.returncode != 0 or not veza.pushes:
        print(f"demo failed: the connector exited {done.returncode}", file=sys.stderr)
        return 1
    app = veza.pushes[0]["payload"]["applications"][0]
    print(f"\nfake Veza received one push to data source {veza.data_source_names()[0]!r}: "
          f"{len(app['local_users'])} users, {len(app['local_groups'])} groups, {len(app['local_roles'])} roles, "
          f"{len(app['resources'])} projects, {len(app['local_access_creds'])} keys")
    print(f"the payload is at {payload_file} ({payload_file.stat().st_size:,} bytes); "
          f"first user: {json.dumps(app['local_users'][0])}")
    for report in veza.reports:
        print(f"fake Veza holds the report {report['name']!r} with {len(report['queries'])} saved queries:")
        for name in veza.report_queries(report["name"]):
            query = next(q for q in veza.queries if q["name"] == name)
            print(f"  - {name}: {json.dumps(query['source_node_types'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
