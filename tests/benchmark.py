#!/usr/bin/env python3
"""Benchmark: the connector against a generated organization on the fake OpenAI, with injected latency.

Not part of the test run. Prints calls made vs the minimum, wall time vs the lower bound
max(longest cursor chain, total calls / workers) x latency + mapping time, peak memory, and mapping time.

    python tests/benchmark.py                                  # 20,000 users, 2,000 projects, 50 ms, 1 and 8 workers
    python tests/benchmark.py --workers 8                      # only the default worker count
    python tests/benchmark.py --users 100000 --projects 5000 --latency 0 --workers 8 --push   # peak memory
    python tests/benchmark.py --scaling                        # mapping + payload time at N and 10N users
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fake_openai import FakeOpenAI, Organization, generate_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402

import veza_openai as vo  # noqa: E402

ADMIN_KEY = "sk-admin-benchmark-key"
VEZA_KEY = "veza-benchmark-key"


def pages(count: int, limit: int) -> int:
    return max(1, math.ceil(count / limit))


def minimum_calls(org: Organization) -> tuple[int, int]:
    """(fewest calls that read everything at the largest page sizes, longest single cursor chain)."""
    f = vo.FAMILIES
    chains = [pages(len(org.users), f["users"].limit), pages(len(org.invites), f["invites"].limit),
              pages(len(org.projects), f["projects"].limit), pages(len(org.admin_api_keys), f["admin API keys"].limit),
              pages(len(org.groups), f["groups"].limit), pages(len(org.roles), f["roles"].limit), 1]  # + org object
    for p in org.projects:
        pid = p["id"]
        chains += [pages(len(org.project_users.get(pid, [])), 100), pages(len(org.service_accounts.get(pid, [])), 100),
                   pages(len(org.api_keys.get(pid, [])), 100), pages(len(org.project_roles.get(pid, [])), 1000),
                   pages(len(org.project_groups.get(pid, [])), 100), 1]  # + model permissions
        chains += [1 for _ in org.project_groups.get(pid, [])]
    for g in org.groups:
        chains += [pages(len(org.group_users.get(g["id"], [])), 1000), 1]
    return sum(chains), max(chains)


def run_connector(fake: FakeOpenAI, workers: int, workdir: Path, veza: FakeVeza | None, ca_file: str) -> dict:
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OPENAI_ORG_ID": fake.org.org_id, "OPENAI_API_KEY": ADMIN_KEY, "OPENAI_BASE_URL": fake.base_url}
    mode = ["--dry-run"]
    if veza is not None:
        env.update(VEZA_URL=veza.url, VEZA_API_KEY=VEZA_KEY, REQUESTS_CA_BUNDLE=ca_file)
        mode = []
    before = fake.calls()
    out = workdir / f"payload-{workers}.json"
    started = time.monotonic()
    process = subprocess.Popen([str(HERE.parent / "veza_openai.py"), *mode, "--save_json", str(out),
                                "--max-workers", str(workers)], env=env, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if process.returncode != 0:
        sys.exit(f"connector failed:\n{stderr}")
    mapped = re.search(r"mapped .* in ([\d.]+)s", stderr)
    return {"wall": wall, "calls": fake.calls() - before, "peak_mb": usage.ru_maxrss / 1024,
            "mapping": float(mapped.group(1)) if mapped else float("nan"), "payload": out}


def snapshot_of(org: Organization) -> vo.Snapshot:
    return vo.Snapshot(
        org_id=org.org_id, users=org.users, invites=org.invites, projects=org.projects,
        admin_api_keys=org.admin_api_keys, groups=org.groups, roles=org.roles, project_users=org.project_users,
        project_service_accounts=org.service_accounts, project_api_keys=org.api_keys,
        project_roles=org.project_roles, project_groups=org.project_groups, model_permissions={},
        group_users=org.group_users, group_roles=org.group_roles, project_group_roles=org.project_group_roles)


def mapping_seconds(users: int, projects: int) -> float:
    snapshot = snapshot_of(generate_organization(users=users, projects=projects))
    started = time.perf_counter()
    with vo.cyclic_gc_paused():  # as run() does
        json.dumps(vo.build_application(snapshot).application.get_payload())
    return time.perf_counter() - started


def scaling(users: int, projects: int) -> None:
    print("mapping + payload + JSON time (pure, in process)")
    base = mapping_seconds(users, projects)
    print(f"  {users:>7} users, {projects:>5} projects: {base:.2f}s")
    for label, (u, p) in (("10x the users", (users * 10, projects)), ("10x users and projects",
                                                                      (users * 10, projects * 10))):
        seconds = mapping_seconds(u, p)
        print(f"  {u:>7} users, {p:>5} projects: {seconds:.2f}s ({label}: {seconds / base:.1f}x the time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--projects", type=int, default=2_000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--service-accounts", type=int, default=2)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every answer")
    parser.add_argument("--workers", default=f"1,{vo.DEFAULT_MAX_WORKERS}", help="comma-separated worker counts")
    parser.add_argument("--scaling", action="store_true", help="only measure mapping time at N and 10N")
    parser.add_argument("--push", action="store_true", help="also push to a fake Veza (memory includes the push)")
    args = parser.parse_args()
    if args.scaling:
        scaling(args.users // 10, args.projects // 10)
        return

    org = generate_organization(users=args.users, projects=args.projects, members=args.members,
                                service_accounts=args.service_accounts, keys=args.keys, groups=args.groups)
    minimum, chain = minimum_calls(org)
    fake = FakeOpenAI(org, admin_key=ADMIN_KEY, latency=args.latency).start()
    print(f"organization: {args.users} users, {args.projects} projects ({args.members} members, "
          f"{args.service_accounts} service accounts, {args.keys} keys each), {args.groups} groups; "
          f"latency {args.latency * 1000:.0f} ms; machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"minimum calls {minimum}, longest cursor chain {chain} calls")
    payloads = []
    with tempfile.TemporaryDirectory() as workdir:
        ca = trustme.CA()
        ca_file = str(Path(workdir) / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        veza = FakeVeza(ca, api_key=VEZA_KEY).start() if args.push else None
        for workers in [int(w) for w in args.workers.split(",")]:
            result = run_connector(fake, workers, Path(workdir), veza, ca_file)
            bound = max(chain, minimum / workers) * args.latency + result["mapping"]
            print(f"workers {workers:>2}: calls {result['calls']} (minimum {minimum}), wall {result['wall']:.1f}s "
                  f"(lower bound {bound:.1f}s, ratio {result['wall'] / bound:.2f}), peak memory "
                  f"{result['peak_mb']:.0f} MB, mapping+payload {result['mapping']:.2f}s, peak server concurrency "
                  f"{fake.peak_in_flight}")
            payloads.append(result["payload"].read_bytes())
            fake.peak_in_flight = 0
        if veza is not None:
            print(f"pushed {len(veza.pushes)} payload(s) of {len(payloads[-1]) / 1e6:.0f} MB of JSON")
            veza.stop()
    if len(payloads) > 1:
        print(f"payloads byte-identical across worker counts: {all(p == payloads[0] for p in payloads)}")
    fake.stop()


if __name__ == "__main__":
    main()
