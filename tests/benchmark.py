#!/usr/bin/env python3
"""Benchmark: the connector against a generated organization on the fake OpenAI, with injected latency.

Not part of the test run. Prints calls made vs the minimum, wall time vs the lower bound
max(longest cursor chain, total calls / workers) x latency + mapping time, the connector's peak memory
(MiB) and CPU time, and mapping time; with --memory, its memory after each stage.

    python tests/benchmark.py                                  # 20,000 users, 2,000 projects, 50 ms, 1 and 8 workers
    python tests/benchmark.py --workers 8                      # only the default worker count
    python tests/benchmark.py --users 100000 --projects 5000 --latency 0 --workers 8 --push   # peak memory
    python tests/benchmark.py --users 100000 --projects 5000 --latency 0 --workers 8 --push --admin-keys 20 \
        --org-role-holders 1000 --role-assignments none     # effective access: admin keys and an organization role
                                                            # that reach every project (payload size, memory)
    python tests/benchmark.py --users 20000 --projects 2000 --latency 0 --workers 8 --role-assignments none --memory
    python tests/benchmark.py --users 100000 --projects 5000 --latency 0 --workers 8 --role-assignments none --memory
                                                               # memory after each stage (read, map, serialise, push)
    python tests/benchmark.py --scaling                        # mapping + payload time at N and 10N users
    python tests/benchmark.py --limit-model fixed-windows      # behind a rate-limit model (tests/fake_limits.py)
    python tests/benchmark.py --models-table                   # each rate-limit model once, small org: a table
"""

from __future__ import annotations

import argparse
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

from fake_limits import Combined, EveryKth, FixedWindows, Limiter, TokenBucket  # noqa: E402
from fake_openai import COMPILED_ROUTES, FakeOpenAI, Organization, _audit_logs, generate_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402

import veza_openai as vo  # noqa: E402

ADMIN_KEY = "sk-admin-benchmark-key"
VEZA_KEY = "veza-benchmark-key"


def pages(count: int, limit: int) -> int:
    return max(1, math.ceil(count / limit))


# The access-review families the generated organization has (tests/fake_openai.py generate_organization).
ACCESS_REVIEW = {"login_every": 10, "wif_every": 10, "certificates": 1, "hosted_tools": True}


def audit_events_read(org: Organization, days: int = vo.DEFAULT_ACTIVITY_DAYS) -> int:
    """The audit log events the connector asks for: its three types within the default window."""
    window = {"event_types[]": list(vo.AUDIT_EVENT_TYPES), "effective_at[gte]": str(int(time.time()) - days * 86_400)}
    return len(_audit_logs(org.audit_logs, window))


def minimum_calls(org: Organization) -> tuple[int, int]:
    """(fewest calls that read everything at the largest page sizes, longest single cursor chain)."""
    f = vo.FAMILIES

    def read(name: str, count: int) -> int:
        return pages(count, f[name].page_size)

    chains = [read("users", len(org.users)), read("invites", len(org.invites)), read("projects", len(org.projects)),
              read("admin_api_keys", len(org.admin_api_keys)), read("groups", len(org.groups)),
              read("roles", len(org.roles)), 1]  # + org object
    # access review: the audit log (at most MAX_AUDIT_LOG_PAGES), providers, organization certificates
    chains += [min(read("audit_logs", audit_events_read(org)), vo.MAX_AUDIT_LOG_PAGES),
               read("workload_identity_providers", len(org.workload_identity_providers)),
               read("certificates", len(org.certificates))]
    chains += [read("federation_rules", len(org.federation_rules.get(provider["id"], [])))
               for provider in org.workload_identity_providers]
    for p in org.projects:
        pid = p["id"]
        chains += [pages(len(org.project_users.get(pid, [])), 100), pages(len(org.service_accounts.get(pid, [])), 100),
                   pages(len(org.api_keys.get(pid, [])), 100), pages(len(org.project_roles.get(pid, [])), 1000),
                   pages(len(org.project_groups.get(pid, [])), 100), 1]  # + model permissions
        chains += [read("project_certificates", len(org.project_certificates.get(pid, []))), 1]  # + hosted tools
        chains += [1 for _ in org.project_groups.get(pid, [])]
    for g in org.groups:
        chains += [pages(len(org.group_users.get(g["id"], [])), 1000), 1]
    return sum(chains), max(chains)


def run_connector(fake: FakeOpenAI, workers: int, workdir: Path, veza: FakeVeza | None, ca_file: str,
                  extra_env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> dict:
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OPENAI_ORG_ID": fake.org.org_id, "OPENAI_API_KEY": ADMIN_KEY, "OPENAI_BASE_URL": fake.base_url,
           **(extra_env or {})}
    mode = ["--dry-run"]
    if veza is not None:
        env.update(VEZA_URL=veza.url, VEZA_API_KEY=VEZA_KEY, REQUESTS_CA_BUNDLE=ca_file)
        mode = []
    before = fake.calls()
    out = workdir / f"payload-{workers}.json"
    started = time.monotonic()
    process = subprocess.Popen([str(HERE.parent / "veza_openai.py"), *mode, "--save_json", str(out),
                                "--max-workers", str(workers), *extra_args], env=env, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if process.returncode != 0:
        sys.exit(f"connector failed:\n{stderr}")
    mapped = re.search(r"mapped .* in ([\d.]+)s", stderr)
    return {"wall": wall, "calls": fake.calls() - before, "peak_mb": usage.ru_maxrss / 1024,
            "cpu": usage.ru_utime + usage.ru_stime,
            "mapping": float(mapped.group(1)) if mapped else float("nan"), "payload": out,
            "memory": MEMORY_LINE.findall(stderr)}


# The connector's --debug line after each stage (veza_openai.log_memory).
MEMORY_LINE = re.compile(r"memory after (.+?): (\S+) MiB resident, peak (\d+) MiB")


def print_memory(stages: list[tuple[str, str, str]], peak_mb: float) -> None:
    """Resident memory after each stage and the peak so far: the stage where the peak rises is the one to shrink."""
    print("  memory per stage (MiB): stage, resident after it, peak so far")
    for stage, resident, peak in stages:
        print(f"    {stage:<14} {resident:>6} {peak:>6}")
    print(f"    {'whole run':<14} {'':>6} {peak_mb:>6.0f}  (the connector's peak, from wait4; "
          f"{peak_mb * 1.048576:.0f} MB)")


LIMIT_MODELS = ("token-bucket-ms", "token-bucket-s", "token-bucket-none", "org-bucket-ms", "org-bucket-s",
                "org-bucket-none", "every-kth", "fixed-windows", "family-windows", "org-bucket-and-windows",
                "org-bucket-doubles", "windows-double", "none")
HINTS = {"ms": "ms", "s": "s", "none": None}


def limit_model(name: str, args: argparse.Namespace) -> Limiter | None:
    """The fake_limits model called `name`, built from the command line's parameters (None: no limit)."""
    if name.startswith("token-bucket-"):
        return TokenBucket(args.bucket_rate, args.bucket_burst, HINTS[name.rsplit("-", 1)[1]],
                           time_scale=args.time_scale)
    if name.startswith("org-bucket-") and name.rsplit("-", 1)[1] in HINTS:
        return organization_bucket(args, HINTS[name.rsplit("-", 1)[1]])
    if name == "every-kth":
        return EveryKth(args.every_k, args.every_retry_after_ms)
    if name == "fixed-windows":
        return project_roles_windows(args)
    if name == "family-windows":  # every family its own window, tight enough that most families meet it
        return FixedWindows(default=(args.family_window_requests, args.window),
                            per_endpoint={"project roles": (args.window_project_roles, args.window)})
    if name == "org-bucket-and-windows":
        return Combined(organization_bucket(args, "s"), project_roles_windows(args))
    if name == "org-bucket-doubles":
        return organization_bucket(args, "ms", doubles_at=args.doubles_at)
    if name == "windows-double":
        return FixedWindows(default=(args.family_window_requests, args.window), doubles_at=args.doubles_at)
    return None


def organization_bucket(args: argparse.Namespace, hint: str | None, doubles_at: float | None = None) -> TokenBucket:
    return TokenBucket(args.org_rate, args.org_burst, hint, time_scale=args.time_scale, shared=True,
                       doubles_at=doubles_at)


def project_roles_windows(args: argparse.Namespace) -> FixedWindows:
    return FixedWindows(default=(args.window_requests, args.window),
                        per_endpoint={"project roles": (args.window_project_roles, args.window)})


def family_of(path: str) -> str:
    for regex, family, *_ in COMPILED_ROUTES:
        if regex.match(path):
            return family
    return "?"


def reads_per_family(fake: FakeOpenAI, since: int = 0) -> dict[str, int]:
    """Successful (200) requests per family in the fake's timeline, from entry `since` on."""
    with fake.lock:
        timeline = fake.timeline[since:]
    counts: dict[str, int] = {}
    for _, path, status in timeline:
        if status == 200:
            family = family_of(path)
            counts[family] = counts.get(family, 0) + 1
    return counts


def run_limited(fake: FakeOpenAI, args: argparse.Namespace, timeout: float) -> dict:
    """One dry run of the connector as a user runs it; never exits: reports the exit status or the timeout."""
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OPENAI_ORG_ID": fake.org.org_id, "OPENAI_API_KEY": ADMIN_KEY, "OPENAI_BASE_URL": fake.base_url,
           "VEZA_OPENAI_TIME_SCALE": str(args.time_scale)}
    argv = [str(HERE.parent / "veza_openai.py"), "--dry-run", "--max-workers", str(args.table_workers)]
    if args.role_assignments:
        argv += ["--role-assignments", args.role_assignments]
    since = len(fake.timeline)
    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        try:
            done = subprocess.run([*argv, "--save_json", str(Path(workdir) / "payload.json")], env=env, cwd=workdir,
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
            errors = [line.split(" ERROR ", 1)[1] for line in done.stderr.splitlines() if " ERROR " in line]
            tail = (errors or done.stderr.strip().splitlines()[-1:]) if done.returncode else []
        except subprocess.TimeoutExpired:
            status, tail = f"timed out ({timeout:g} s)", []
        wall = time.monotonic() - started
    reads = reads_per_family(fake, since)
    with fake.lock:
        throttled = sum(1 for _, _, code in fake.timeline[since:] if code == 429)
    return {"status": status, "wall": wall, "reads": reads, "throttled": throttled, "error": tail[0] if tail else ""}


def models_table(args: argparse.Namespace) -> None:
    """Each rate-limit model once on a small organization; a Markdown table of reads, 429s, wall and bounds."""
    org = generate_organization(users=args.table_users, projects=args.table_projects, members=args.members,
                                service_accounts=args.service_accounts, keys=args.keys,
                                groups=min(args.groups, 10))
    args.role_assignments = args.role_assignments or "all"
    print(f"organization: {args.table_users} users, {args.table_projects} projects ({args.members} members each), "
          f"{min(args.groups, 10)} groups; --role-assignments {args.role_assignments}, "
          f"--max-workers {args.table_workers}; latency {args.table_latency * 1000:.0f} ms; "
          f"VEZA_OPENAI_TIME_SCALE={args.time_scale:g}; per-model timeout {args.model_timeout:g} s")
    print(f"models: token bucket {args.bucket_rate:g}/s burst {args.bucket_burst:g} per endpoint; organization "
          f"bucket {args.org_rate:g}/s burst {args.org_burst:g} shared by every endpoint; every {args.every_k}th "
          f"request (all endpoints together) retry-after-ms {args.every_retry_after_ms}; fixed windows "
          f"{args.window_project_roles} on project roles, {args.window_requests} elsewhere (family-windows: "
          f"{args.family_window_requests}), per {args.window:g} s window per endpoint, sliding from the first "
          f"request, no headers; the doubling models double {args.doubles_at:g} s after their first request")
    rows: list[str] = []
    notes: list[str] = []
    clean = None
    chosen = args.models.split(",") if args.models else [m for m in LIMIT_MODELS if m != "none"]
    for name in ("none", *chosen):
        fake = FakeOpenAI(org, admin_key=ADMIN_KEY, latency=args.table_latency).start()
        fake.limiter = limit_model(name, args)
        try:
            result = run_limited(fake, args, args.model_timeout)
        finally:
            fake.stop()
        if name == "none" and result["status"] == "ok":
            clean = result["wall"]
        rows.append(table_row(name, fake.limiter, result, clean, args))
        if result["error"]:
            notes.append(f"- {name}: {result['error'][:200]}")
        print(f"  {name}: {result['status']}, {result['wall']:.1f}s", file=sys.stderr, flush=True)
    print()
    print("| model | result | reads (200s) | 429s | 429s per read (forced) | wall | bound | wall / bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    if notes:
        print("first error of each failed run:")
        print("\n".join(notes))
        print()
    print("bound: the wall time the limit alone forces for the reads the run made (fake_limits `bound`), never "
          "less than the run without limits (model none); every-kth forces no wait, only a 429 per "
          f"{args.every_k - 1} reads, so its bound is the run without limits.")


def table_row(name: str, limiter: Limiter | None, result: dict, clean: float | None,
              args: argparse.Namespace) -> str:
    """One Markdown row: 429s per useful read (and the share the server forces), wall against the bound."""
    reads = sum(result["reads"].values())
    bound = max(limiter.bound(result["reads"]) if limiter is not None else 0.0, clean or 0.0)
    forced = 1 / (args.every_k - 1) if isinstance(limiter, EveryKth) else 0.0
    per_read = f"{result['throttled'] / reads:.2f} ({forced:.2f})" if reads else "-"
    versus_bound = f"{result['wall'] / bound:.2f}" if bound else "-"
    if result["status"] != "ok":  # partial reads: no ratio means anything
        versus_bound = "-"
    return (f"| {name} | {result['status']} | {reads} | {result['throttled']} | {per_read} | {result['wall']:.1f} s "
            f"| {bound:.1f} s | {versus_bound} |")


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
    with vo.cyclic_gc_paused():  # as discover() does
        vo.serialize_application(vo.build_application(snapshot).application)
    return time.perf_counter() - started


def scaling(users: int, projects: int) -> None:
    print("mapping + payload JSON time (pure, in process)")
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
    parser.add_argument("--admin-keys", type=int, default=0, help="admin API keys, owned by organization owners")
    parser.add_argument("--org-role-holders", type=int, default=0,
                        help="users holding a custom organization role (through one group; a custom role makes "
                        "--role-assignments auto read every user's roles)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every answer")
    parser.add_argument("--workers", default=f"1,{vo.DEFAULT_MAX_WORKERS}", help="comma-separated worker counts")
    parser.add_argument("--scaling", action="store_true", help="only measure mapping time at N and 10N")
    parser.add_argument("--push", action="store_true", help="also push to a fake Veza (memory includes the push)")
    parser.add_argument("--memory", action="store_true",
                        help="print the connector's memory after each stage (runs it with --debug; implies --push)")
    limits = parser.add_argument_group("rate limits (tests/fake_limits.py)")
    limits.add_argument("--limit-model", choices=LIMIT_MODELS, default="none",
                        help="serve behind this rate-limit model (default none)")
    limits.add_argument("--models-table", action="store_true",
                        help="run each rate-limit model once on a small organization and print a Markdown table")
    limits.add_argument("--time-scale", type=float, default=0.01,
                        help="VEZA_OPENAI_TIME_SCALE for the connector under a limit model (default 0.01)")
    limits.add_argument("--bucket-rate", type=float, default=40.0, help="token bucket: tokens/s per endpoint")
    limits.add_argument("--bucket-burst", type=float, default=20.0, help="token bucket: bucket size per endpoint")
    limits.add_argument("--org-rate", type=float, default=40.0, help="organization bucket: tokens/s for everything")
    limits.add_argument("--org-burst", type=float, default=10.0, help="organization bucket: bucket size")
    limits.add_argument("--family-window-requests", type=int, default=20,
                        help="family-windows and windows-double: requests per window on every endpoint")
    limits.add_argument("--doubles-at", type=float, default=2.4,
                        help="the doubling models: real seconds after the first request when the limit doubles")
    limits.add_argument("--models", help="comma-separated models for --models-table (default: all)")
    limits.add_argument("--every-k", type=int, default=7, help="every-kth: every k-th request (all endpoints) is 429")
    limits.add_argument("--every-retry-after-ms", type=int, default=20, help="every-kth: retry-after-ms sent")
    limits.add_argument("--window", type=float, default=0.6, help="fixed windows: window length, real seconds")
    limits.add_argument("--window-requests", type=int, default=60, help="fixed windows: requests per window")
    limits.add_argument("--window-project-roles", type=int, default=7,
                        help="fixed windows: requests per window on project roles")
    limits.add_argument("--role-assignments", choices=("none", "auto", "all"),
                        help="passed to the connector (default: its own; 'all' in --models-table)")
    limits.add_argument("--table-users", type=int, default=300)
    limits.add_argument("--table-projects", type=int, default=24)
    limits.add_argument("--table-workers", type=int, default=vo.DEFAULT_MAX_WORKERS)
    limits.add_argument("--table-latency", type=float, default=0.005,
                        help="seconds added to every answer in --models-table (default 5 ms: 500 ms at time scale "
                        "0.01, so latency, windows and waits keep the real API's proportions)")
    limits.add_argument("--model-timeout", type=float, default=300.0, help="seconds per model in --models-table")
    args = parser.parse_args()
    if args.scaling:
        scaling(args.users // 10, args.projects // 10)
        return
    if args.models_table:
        models_table(args)
        return
    args.push = args.push or args.memory

    org = generate_organization(users=args.users, projects=args.projects, members=args.members,
                                service_accounts=args.service_accounts, keys=args.keys, groups=args.groups,
                                admin_keys=args.admin_keys, org_role_holders=args.org_role_holders, **ACCESS_REVIEW)
    minimum, chain = minimum_calls(org)
    fake = FakeOpenAI(org, admin_key=ADMIN_KEY, latency=args.latency).start()
    extra_env, extra_args = {}, ()
    if args.limit_model != "none":
        extra_env["VEZA_OPENAI_TIME_SCALE"] = str(args.time_scale)
    if args.role_assignments:
        extra_args = ("--role-assignments", args.role_assignments)
    if args.memory:
        extra_args += ("--debug",)
    print(f"organization: {args.users} users, {args.projects} projects ({args.members} members, "
          f"{args.service_accounts} service accounts, {args.keys} keys each), {args.groups} groups, "
          f"{len(org.admin_api_keys)} admin keys, {args.org_role_holders} holders of an organization custom role; "
          f"access review {ACCESS_REVIEW} ({audit_events_read(org)} audit events); "
          f"latency {args.latency * 1000:.0f} ms; machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"minimum calls {minimum}, longest cursor chain {chain} calls")
    payloads = []
    with tempfile.TemporaryDirectory() as workdir:
        ca = trustme.CA()
        ca_file = str(Path(workdir) / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        veza = FakeVeza(ca, api_key=VEZA_KEY).start() if args.push else None
        for workers in [int(w) for w in args.workers.split(",")]:
            fake.limiter = limit_model(args.limit_model, args)
            since = len(fake.timeline)
            result = run_connector(fake, workers, Path(workdir), veza, ca_file, extra_env, extra_args)
            if fake.limiter is not None:
                reads = reads_per_family(fake, since)
                print(f"limit model {args.limit_model}: {sum(reads.values())} reads, "
                      f"{fake.limiter.total_throttled} answered 429, the limit alone forces "
                      f"{fake.limiter.bound(reads):.1f}s")
            bound = max(chain, minimum / workers) * args.latency + result["mapping"]
            print(f"workers {workers:>2}: calls {result['calls']} (minimum {minimum}), wall {result['wall']:.1f}s "
                  f"(lower bound {bound:.1f}s, ratio {result['wall'] / bound:.2f}), peak memory "
                  f"{result['peak_mb']:.0f} MiB, mapping+payload {result['mapping']:.2f}s, connector CPU "
                  f"{result['cpu']:.1f}s, peak server concurrency {fake.peak_in_flight}")
            if args.memory:
                print_memory(result["memory"], result["peak_mb"])
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
