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
    python tests/benchmark.py --pacing-table                   # issue 25's pacing models, per minute and per
                                                               # second in real time: a table and a JSON line a row
    python tests/benchmark.py --users 100000 --projects 5000 --latency 0 --workers 8 --push --role-assignments none \
        --state-dir [DIR]                                      # with a state directory (DIR kept: run twice to resume)
    python tests/benchmark.py --resumable --time-scale 0.05 --table-latency 0.025
                                                               # issue 29: hourly runs, --max-run-time 50 min, one
                                                               # state directory, the known limits scaled in time;
                                                               # 0.05 (an hour is 3 min): at 0.01 the scaled limits
                                                               # ask about 1,000 requests a second at first, more
                                                               # than 2 cores serve, and the CPU, not the limits,
                                                               # sets the pace
    python tests/benchmark.py --resumable --full-read --time-scale 0.05 --table-latency 0.025
                                                               # the same, one uninterrupted run: the full read's
                                                               # time, for the first push's bound
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trustme

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fake_limits import Combined, EveryKth, FirstRequestsRefused, FixedWindows, Limiter, TokenBucket  # noqa: E402
from fake_openai import COMPILED_ROUTES, FakeOpenAI, Organization, _audit_logs, generate_organization  # noqa: E402
from fake_veza import FakeVeza  # noqa: E402

import veza_openai as vo  # noqa: E402

ADMIN_KEY = "sk-admin-benchmark-key"
VEZA_KEY = "veza-benchmark-key"


def pages(count: int, limit: int) -> int:
    return max(1, math.ceil(count / limit))


# The access-review families the generated organization has (tests/fake_openai.py generate_organization).
ACCESS_REVIEW = {"login_every": 10, "wif_every": 10, "certificates": 1, "hosted_tools": True}


def audit_events_read(org: Organization, days: int = vo.OPTION["activity_days"].default) -> int:
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


def run_limited(fake: FakeOpenAI, args: argparse.Namespace, timeout: float, time_scale: float | None = None) -> dict:
    """One dry run of the connector as a user runs it; never exits: reports the exit status or the timeout.

    `reads`: 200s per family; `requests`: every answer but a 429 per family (what a limit charges);
    `last_log`: the connector's last log line (the one it was writing when a timeout stopped it).
    """
    scale = args.time_scale if time_scale is None else time_scale
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OPENAI_ORG_ID": fake.org.org_id, "OPENAI_API_KEY": ADMIN_KEY, "OPENAI_BASE_URL": fake.base_url,
           "VEZA_OPENAI_TIME_SCALE": str(scale)}
    argv = [str(HERE.parent / "veza_openai.py"), "--dry-run", "--max-workers", str(args.table_workers)]
    if args.role_assignments:
        argv += ["--role-assignments", args.role_assignments]
    since = len(fake.timeline)
    exit_code: int | None = None
    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        try:
            done = subprocess.run([*argv, "--save_json", str(Path(workdir) / "payload.json")], env=env, cwd=workdir,
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            exit_code, stderr = done.returncode, done.stderr
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
            errors = [line.split(" ERROR ", 1)[1] for line in done.stderr.splitlines() if " ERROR " in line]
            tail = (errors or done.stderr.strip().splitlines()[-1:]) if done.returncode else []
        except subprocess.TimeoutExpired as stopped:
            stderr = stopped.stderr or ""
            stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            status, tail = f"timed out ({timeout:g} s)", []
        wall = time.monotonic() - started
    reads = reads_per_family(fake, since)
    with fake.lock:
        timeline = fake.timeline[since:]
    requests: dict[str, int] = {}
    for _, path, code in timeline:
        if code != 429:
            requests[family_of(path)] = requests.get(family_of(path), 0) + 1
    throttled = sum(1 for _, _, code in timeline if code == 429)
    last_log = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return {"status": status, "wall": wall, "reads": reads, "throttled": throttled, "error": tail[0] if tail else "",
            "requests": requests, "exit": exit_code, "last_log": last_log, "started": started}


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


# --- the pacing table (issue 25): limits per minute (scaled) and per second (real time) -----------------------

# The limits the table measures, as the issue states them: per minute, 7 on project roles and 60 elsewhere, or
# 20 on every family; per second, a bucket of 40 a second holding 10. The three endpoints of the one-off 429s
# are the first lists a run reads, all within its first few milliseconds.
PER_MINUTE = {"windows": (7, 60), "family-windows": 20, "spent-windows": 60}
BUCKET_RATE, BUCKET_BURST = 40.0, 10.0
ONE_OFF_FAMILIES = ("users", "invites", "projects")
# spent-windows is the new user (defaults of --spent-*): the Quick start's dry run, then the next run at once,
# on 60 projects with the default --role-assignments (auto: no per-user reads, the generated organization has no
# custom roles). Every per-project endpoint then spends exactly its one window at the end of the first run, so the
# second meets eight spent endpoints at once. The per-minute models run at --minute-scale 0.1: at 0.01 the second
# process's own start (about 0.2 s) is 20 seconds of a 60-second window, and the windows have refilled before it
# sends a request; and every run's start and mapping (about 0.5 s) would count as 50 s of limit time.
PACING_MODELS = ("none-per-minute", "windows", "family-windows", "spent-windows", "none-real-time",
                 "endpoint-bucket-ms", "endpoint-bucket-s", "endpoint-bucket-none", "org-bucket-ms", "org-bucket-s",
                 "org-bucket-none", "one-off-429s")
PACING_LABELS = {
    "none-per-minute": "no limit, scaled as the per-minute rows (their floor)",
    "windows": "windows, no header: 7 a minute on project roles, 60 elsewhere",
    "family-windows": "every family its own window of 20 a minute, no header",
    "spent-windows": "windows of 60 a minute per endpoint, no header, just spent by a dry run (its own organization, "
                     "scale and unlimited floor: see the header)",
    "none-real-time": "no limit, in real time (the floor of the per-second rows)",
    "endpoint-bucket-ms": "token bucket per endpoint 40/s, burst 10, `retry-after-ms`",
    "endpoint-bucket-s": "token bucket per endpoint 40/s, burst 10, whole-second `retry-after`",
    "endpoint-bucket-none": "token bucket per endpoint 40/s, burst 10, no header",
    "org-bucket-ms": "one bucket for the organization 40/s, burst 10, `retry-after-ms`",
    "org-bucket-s": "one bucket for the organization 40/s, burst 10, whole-second `retry-after`",
    "org-bucket-none": "one bucket for the organization 40/s, burst 10, no header",
    "one-off-429s": "one 429 (no header) on the first request of users, invites, projects; no limit after "
                    "(in real time; bound: the unlimited run)",
}


def pacing_scale(name: str, args: argparse.Namespace) -> float:
    """The connector's VEZA_OPENAI_TIME_SCALE for a model: the table's scale per minute, 1 (real time) per second."""
    return args.minute_scale if name in ("none-per-minute", "windows", "family-windows", "spent-windows") else 1.0


def pacing_model(name: str, minute: float) -> Limiter | None:
    """The limiter of a pacing model; `minute` is a minute in real seconds (60 x the time scale)."""
    if name == "windows":
        roles, others = PER_MINUTE["windows"]
        return FixedWindows(default=(others, minute), per_endpoint={"project roles": (roles, minute)})
    if name in ("family-windows", "spent-windows"):
        return FixedWindows(default=(PER_MINUTE[name], minute))
    if name.startswith(("endpoint-bucket-", "org-bucket-")):
        return TokenBucket(BUCKET_RATE, BUCKET_BURST, HINTS[name.rsplit("-", 1)[1]], time_scale=1.0,
                           shared=name.startswith("org-"))
    if name == "one-off-429s":
        return FirstRequestsRefused(ONE_OFF_FAMILIES)
    return None


def served(org: Organization, args: argparse.Namespace, scale: float, limiter: Limiter | None,
           spend_first: bool = False) -> tuple[dict, dict | None, tuple[dict, float] | None]:
    """The measured run behind `limiter` on a fresh fake; spend_first: a run before it, and the windows when it started.

    Returns (measured run, earlier run or None, (windows, start) or None).
    """
    fake = FakeOpenAI(org, admin_key=ADMIN_KEY, latency=args.table_latency).start()
    fake.limiter = limiter
    try:
        if not spend_first:
            return run_limited(fake, args, args.model_timeout, scale), None, None
        earlier = run_limited(fake, args, args.model_timeout, scale)
        windows, now = limiter.windows(), time.monotonic()
        return run_limited(fake, args, args.model_timeout, scale), earlier, (windows, now)
    finally:
        fake.stop()


def fastest_unlimited(org: Organization, args: argparse.Namespace, scale: float) -> dict:
    """The fastest of --floor-runs runs without a limit (a floor: the least the machine needs, whatever its load)."""
    runs = [served(org, args, scale, None)[0] for _ in range(max(1, args.floor_runs))]
    finished = [run for run in runs if run["exit"] == 0] or runs
    fastest = min(finished, key=lambda run: run["wall"])
    return {**fastest, "walls": [round(run["wall"], 3) for run in runs]}


def spent_windows_org(args: argparse.Namespace) -> tuple[Organization, argparse.Namespace]:
    org = generate_organization(users=args.table_users, projects=args.spent_projects, members=args.members,
                                service_accounts=args.service_accounts, keys=args.keys, groups=min(args.groups, 10))
    return org, argparse.Namespace(**{**vars(args), "role_assignments": args.spent_role_assignments})


def pacing_run(name: str, org: Organization, args: argparse.Namespace, floors: dict[float, dict]) -> dict:
    """Run one model and measure it against its bound: a dict (the JSON row; keys starting with _ are not printed).

    The bound is the limiter's for the requests made (every answer but a 429), never less than the run without
    limits at the same scale; a run that did not finish is bounded by the requests of that unlimited run.
    spent-windows: an unlimited run (its floor), then a dry run and at once the measured run, on its own organization.
    """
    scale = pacing_scale(name, args)
    limiter = pacing_model(name, 60 * scale)
    floor = floors.get(scale)
    if name == "spent-windows":
        org, args = spent_windows_org(args)
        unlimited = fastest_unlimited(org, args, scale)
        floor = {"wall": unlimited["wall"], "requests": unlimited["requests"]} if unlimited["exit"] == 0 else None
    if limiter is None:
        result, earlier, begun = fastest_unlimited(org, args, scale), None, None
    else:
        result, earlier, begun = served(org, args, scale, limiter, spend_first=name == "spent-windows")
    finished = result["exit"] == 0
    requests = result["requests"] if finished or floor is None else floor["requests"]
    if limiter is None:  # an unlimited run is its own bound: the floor of the others
        limit_bound = bound = result["wall"]
    else:
        limit_bound = limiter.bound_from(requests, begun[1], begun[0]) if begun else limiter.bound(requests)
        bound = max(limit_bound, floor["wall"] if floor else 0.0)
    reads = sum(result["reads"].values())
    forced = limiter.forced(result["requests"]) if limiter is not None else 0
    row = {"model": name, "speed": "per minute" if scale < 1 else "per second", "time_scale": scale,
           "reads": reads, "requests": sum(result["requests"].values()), "throttled": result["throttled"],
           "forced": forced, "per_read": round(result["throttled"] / reads, 4) if reads else None,
           "beyond_forced_per_read": round((result["throttled"] - forced) / reads, 4) if reads else None,
           "wall": round(result["wall"], 3), "limit_bound": round(limit_bound, 3), "bound": round(bound, 3),
           "floor": round(floor["wall"], 3) if floor else None,
           "bound_from": "its requests" if requests is result["requests"] else "the unlimited run's requests",
           "ratio": round(result["wall"] / bound, 3) if bound else None, "finished": finished,
           "exit": result["exit"], "timed_out": result["exit"] is None, "timeout": args.model_timeout,
           "error": result["error"], "last_log": "" if finished else result["last_log"],
           "_requests_by_family": result["requests"]}
    if "walls" in result or name == "spent-windows":
        row["unlimited_walls"] = result["walls"] if "walls" in result else unlimited["walls"]
    if earlier is not None:
        row["earlier_run"] = {"wall": round(earlier["wall"], 3), "exit": earlier["exit"],
                              "throttled": earlier["throttled"], "reads": sum(earlier["reads"].values())}
    row["setup"] = {"users": args.table_users, "projects": len(org.projects), "role_assignments": args.role_assignments,
                    "workers": args.table_workers, "latency": args.table_latency,
                    "connector_version": vo.__version__, "load_average": round(os.getloadavg()[0], 1)}
    row["meets_targets"] = bool(finished and row["ratio"] is not None and row["ratio"] <= 1.3
                                and row["beyond_forced_per_read"] is not None and row["beyond_forced_per_read"] <= 0.25)
    return row


def pacing_row(row: dict) -> str:
    """A Markdown row: 429s per useful read (forced share), wall against the bound, whether the run finished."""
    reads = row["reads"]
    per_read = f"{row['per_read']:.2f} ({row['forced'] / reads:.2f})" if reads else "-"
    if row["timed_out"]:
        wall, ratio, finished = f"> {row['timeout']:g} s", f"> {row['timeout'] / row['bound']:.1f}", "no (timeout)"
    else:
        wall, ratio = f"{row['wall']:.1f} s", f"{row['ratio']:.2f}"
        finished = "yes" if row["finished"] else f"no (exit {row['exit']})"
    return (f"| {row['model']} | {row['speed']} | {reads} | {row['throttled']} | {per_read} | {wall} "
            f"| {row['bound']:.1f} s | {ratio} | {finished} | {'yes' if row['meets_targets'] else 'no'} |")


def pacing_table(args: argparse.Namespace) -> None:
    """Issue 25's pacing models once each on the models-table organization: a Markdown table and a JSON line a row."""
    org = generate_organization(users=args.table_users, projects=args.table_projects, members=args.members,
                                service_accounts=args.service_accounts, keys=args.keys,
                                groups=min(args.groups, 10))
    args.role_assignments = args.role_assignments or "all"
    args.model_timeout = args.model_timeout or 180.0
    chosen = args.models.split(",") if args.models else list(PACING_MODELS)
    unknown = [name for name in chosen if name not in PACING_MODELS]
    if unknown:
        sys.exit(f"unknown pacing models {unknown}; choose from {', '.join(PACING_MODELS)}")
    # the floors first: the unlimited run at each scale a chosen model runs at
    scales = {pacing_scale(name, args) for name in chosen if name != "spent-windows"}  # spent: its own organization
    names = [floor for floor in ("none-per-minute", "none-real-time") if pacing_scale(floor, args) in scales]
    names += [name for name in chosen if name not in names]
    print(f"organization: {args.table_users} users, {args.table_projects} projects ({args.members} members each), "
          f"{min(args.groups, 10)} groups; --dry-run --role-assignments {args.role_assignments} --max-workers "
          f"{args.table_workers}; latency {args.table_latency * 1000:g} ms; per minute: VEZA_OPENAI_TIME_SCALE="
          f"{args.minute_scale:g} (a minute is {60 * args.minute_scale:g} s); spent-windows: {args.spent_projects} "
          f"projects, --role-assignments {args.spent_role_assignments}; per second: real time "
          f"(VEZA_OPENAI_TIME_SCALE=1); timeout {args.model_timeout:g} s a run; unlimited runs: the fastest of "
          f"{args.floor_runs}; machine: "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}")
    floors: dict[float, dict] = {}
    rows = []
    for name in names:
        row = pacing_run(name, org, args, floors)
        if name.startswith("none-") and row["finished"]:
            floors[row["time_scale"]] = {"wall": row["wall"], "requests": row["_requests_by_family"]}
        rows.append(row)
        print(f"  {name}: exit {row['exit']}, {row['wall']:.1f} s, {row['throttled']} 429s", file=sys.stderr,
              flush=True)
    print()
    print("| model | speed | reads (200s) | 429s | 429s per read (forced) | wall | bound | wall / bound | finished "
          "(exit 0) | targets |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    print("\n".join(pacing_row(row) for row in rows))
    print()
    print("models:")
    for row in rows:
        print(f"- {row['model']}: {PACING_LABELS[row['model']]}")
    print()
    print("bound: the wall time the limit alone forces for the requests the run made (fake_limits `bound`; every "
          "answer but a 429 counts, as the limiter charges it), never less than the unlimited run at the same "
          "speed; spent-windows: from the limiter's windows when the measured run started (`bound_from`: what is "
          "left of each window at once, then the refill and a window each). A run that did not finish is bounded "
          "by the unlimited run's requests and shows '> timeout / bound'. targets: finished, wall / bound <= 1.3 "
          "and at most 0.25 429s per read beyond the forced share.")
    notes = [f"- {row['model']}: " + (row["error"] or f"last log line: {row['last_log']}")[:300]
             for row in rows if not row["finished"]]
    notes += [f"- spent-windows: its unlimited run took {row['floor'] or float('nan'):.1f} s; the dry run before it "
              f"{row['earlier_run']['wall']:.1f} s with {row['earlier_run']['throttled']} 429s (exit "
              f"{row['earlier_run']['exit']})" for row in rows if "earlier_run" in row]
    if notes:
        print()
        print("\n".join(notes))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 minute), {os.getloadavg()[1]:.1f} (5 minutes)")
    print()
    print("JSON, one line a row:")
    for row in rows:
        print(json.dumps({key: value for key, value in row.items() if not key.startswith("_")}, sort_keys=True))


# --- resumable runs (issue 29): an hourly schedule on one state directory, the known limits scaled in time ----------

# The schedule, in unscaled units: a run every hour, --max-run-time 50 minutes, --timeout 30 s; the known
# limits: 7 requests a minute on project roles, 60 on every other endpoint, no retry-after header.
RUN_EVERY_S, MAX_RUN_S, TIMEOUT_S = 3600, 50 * 60, 30
PER_MINUTE_ROLES, PER_MINUTE_OTHERS = 7, 60
SUMMARY_FIELD = re.compile(r"(\w+)=(\S*)")
INCOMPLETE_LINE = re.compile(r"incomplete: (\d+) lists unread and not kept, (\d+) kept lists older")
VOUCHED_LINE = re.compile(r"(\d+) kept lists older than --max-age \S+ pushed")


def full_read_calls(org: Organization) -> dict[str, int]:
    """The calls a full read makes on each per-entity endpoint (fake family names); the top-level lists are a few."""
    projects = len(org.projects)
    calls = {family: projects for family in ("project users", "project service accounts", "project API keys",
                                             "project groups", "model permissions", "project certificates",
                                             "hosted tool permissions", "project roles")}
    calls["user roles"] = len(org.users)
    calls["project user roles"] = sum(len(members) for members in org.project_users.values())
    return calls


def full_read_bound(org: Organization) -> tuple[str, int, float]:
    """(slowest endpoint, its calls, minutes): the full read's bound, unscaled, at the known limits."""
    rates = {family: PER_MINUTE_ROLES if family == "project roles" else PER_MINUTE_OTHERS
             for family in full_read_calls(org)}
    family, calls = max(full_read_calls(org).items(), key=lambda item: item[1] / rates[item[0]])
    return family, calls, calls / rates[family]


def state_files(state: Path) -> tuple[int, float | None]:
    """(list files in the state, the oldest one's modification time): a list's file is rewritten when it is read."""
    times = [entry.stat().st_mtime for entry in state.glob("lists/*/*.json")]
    return len(times), min(times, default=None)


def resumable_run(fake: FakeOpenAI, veza: FakeVeza, ca_file: str, state: Path | None, args: argparse.Namespace,
                  max_age: int) -> dict:
    """One scheduled run, pushed to the fake Veza: its exit status, summary fields, calls, 429s and wall time;
    without a state directory, one uninterrupted run (no --max-run-time)."""
    scale = args.time_scale
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OPENAI_ORG_ID": fake.org.org_id, "OPENAI_API_KEY": ADMIN_KEY, "OPENAI_BASE_URL": fake.base_url,
           "VEZA_OPENAI_TIME_SCALE": str(scale), "VEZA_URL": veza.url, "VEZA_API_KEY": VEZA_KEY,
           "REQUESTS_CA_BUNDLE": ca_file}
    argv = [str(HERE.parent / "veza_openai.py"), "--timeout", f"{TIMEOUT_S * scale:g}", "--max-workers",
            str(args.table_workers)]
    if state is not None:
        argv += ["--state-dir", str(state), "--max-run-time", f"{MAX_RUN_S * scale:g}", "--max-age", str(max_age)]
    if args.role_assignments:
        argv += ["--role-assignments", args.role_assignments]
    with fake.lock:
        requests_before = len(fake.requests)
    throttled_before = fake.limiter.total_throttled
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=(MAX_RUN_S + RUN_EVERY_S) * scale + 60 if state else 24 * RUN_EVERY_S * scale)
        exit_code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as stopped:
        exit_code = None
        stderr = stopped.stderr.decode(errors="replace") if isinstance(stopped.stderr, bytes) else stopped.stderr or ""
    ended = time.time()
    wall = time.monotonic() - started
    with fake.lock:  # the fake's request logs grow with every run: keep only what the next row needs
        calls = len(fake.requests) - requests_before
        for log in (fake.requests, fake.timeline, fake.user_agents, fake.authorizations):
            log.clear()
    with veza.lock:
        pushed = len(veza.pushes)
        veza.pushes.clear()
    lines = stderr.strip().splitlines()
    summary = next((dict(SUMMARY_FIELD.findall(line.split("summary: ", 1)[1])) for line in reversed(lines)
                    if "summary: " in line), {})
    oldest = vo.epoch_seconds(summary.get("oldest_read") or None)
    incomplete = next((INCOMPLETE_LINE.search(line) for line in lines if INCOMPLETE_LINE.search(line)), None)
    note = f"{incomplete.group(1)} missing, {incomplete.group(2)} too old" if incomplete else ""
    if exit_code not in (0, 3):
        errors = [line.split(" ERROR ", 1)[1] for line in lines if " ERROR " in line]
        note = (errors or lines[-1:] or ["no output"])[0][:160] if exit_code is not None else "timed out"
    files, oldest_file = state_files(state) if state else (0, None)
    return {"exit": exit_code, "outcome": summary.get("outcome", "-"), "read": summary.get("lists_read", "-"),
            "kept": summary.get("lists_kept", "-"),
            "vouched": int(next((match.group(1) for match in map(VOUCHED_LINE.search, lines) if match), 0)),
            "oldest_h": None if oldest is None else (ended - oldest) / scale / 3600, "calls": calls,
            "throttled": fake.limiter.total_throttled - throttled_before,
            "wall": wall, "pushed": pushed, "note": note, "stderr": stderr, "files": files,
            "state_oldest_h": None if oldest_file is None else (ended - oldest_file) / scale / 3600}


def resumable(args: argparse.Namespace) -> None:
    """Issue 29's benchmark: hourly runs with --max-run-time 50 min on one state directory, pushed to a fake Veza."""
    scale = args.time_scale
    org = generate_organization(users=args.users, projects=args.projects, members=args.members,
                                service_accounts=args.service_accounts, keys=args.keys, groups=args.groups,
                                custom_roles=True, **ACCESS_REVIEW)
    slowest, slowest_calls, full_minutes = full_read_bound(org)
    max_age = math.ceil((full_minutes * 60 + RUN_EVERY_S) * scale)
    if max_age < vo.OPTION["max_age"].low:
        sys.exit(f"--max-age would be {max_age} s, below its minimum {vo.OPTION['max_age'].low:g} s: use a larger "
                 "--time-scale")
    first_push_bound = math.ceil(full_minutes * 60 / MAX_RUN_S) + 1
    minute = 60 * scale
    print(f"organization: {args.users} users, {args.projects} projects ({args.members} members each), "
          f"{args.groups} groups, a custom role (--role-assignments {args.role_assignments or 'auto'}: every user's "
          f"and every project member's roles are read); access review {ACCESS_REVIEW}; latency "
          f"{args.table_latency * 1000:g} ms")
    print(f"limits: fixed windows per endpoint, {PER_MINUTE_ROLES} a minute on project roles, {PER_MINUTE_OTHERS} "
          f"elsewhere, no header; time scale {scale:g} (a minute is {minute:g} s, an hour {RUN_EVERY_S * scale:g} s)")
    print(f"schedule: {args.runs} runs, one every hour (scaled: {RUN_EVERY_S * scale:g} s), --max-run-time "
          f"{MAX_RUN_S * scale:g} (50 min), --timeout {TIMEOUT_S * scale:g} ({TIMEOUT_S} s), --max-age {max_age} "
          f"(the full read's bound + 1 h = {max_age / scale / 3600:.2f} h), --max-workers {args.table_workers}; one "
          f"state directory; pushed to a fake Veza; machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}")
    fake = FakeOpenAI(org, admin_key=ADMIN_KEY, latency=args.table_latency).start()
    fake.limiter = FixedWindows(default=(PER_MINUTE_OTHERS, minute),
                                per_endpoint={"project roles": (PER_MINUTE_ROLES, minute)})
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        ca = trustme.CA()
        ca_file = str(Path(workdir) / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        veza = FakeVeza(ca, api_key=VEZA_KEY).start()
        state = Path(workdir) / "state"
        origin = time.monotonic()
        try:
            if args.full_read:  # the time an uninterrupted read takes here, for the first push's bound
                row = resumable_run(fake, veza, ca_file, None, args, max_age)
                minutes = row["wall"] / scale / 60
                print(f"uninterrupted full read: exit {row['exit']}, {row['outcome']}, {row['wall']:.1f} s = "
                      f"{minutes:.0f} min unscaled ({row['calls']} calls, {row['throttled']} answered 429); "
                      f"⌈{minutes:.0f} / 50⌉ + 1 = run {math.ceil(minutes / 50) + 1}")
                return
            for number in range(1, args.runs + 1):
                time.sleep(max(0.0, origin + (number - 1) * RUN_EVERY_S * scale - time.monotonic()))
                row = resumable_run(fake, veza, ca_file, state, args, max_age)
                row["number"], row["at_h"] = number, (time.monotonic() - origin - row["wall"]) / scale / 3600
                rows.append(row)
                if args.resumable_logs:
                    Path(args.resumable_logs).mkdir(parents=True, exist_ok=True)
                    (Path(args.resumable_logs) / f"run-{number:02d}.log").write_text(row["stderr"])
                print(f"  run {number}: exit {row['exit']}, {row['outcome']}, {row['wall']:.1f} s", file=sys.stderr,
                      flush=True)
            du = subprocess.run(["du", "-sk", str(state)], capture_output=True, text=True).stdout.split()[0]
            apparent = subprocess.run(["du", "-sk", "--apparent-size", str(state)], capture_output=True,
                                      text=True).stdout.split()[0]
            files, _ = state_files(state)
            per_family = Counter(path.parent.name for path in state.glob("lists/*/*.json"))
        finally:
            veza.stop()
            fake.stop()
    print()
    print("| run | starts at (h) | exit | outcome | lists read | lists kept | kept, older than --max-age, vouched for "
          "| oldest list pushed (h) | oldest state file (h) | calls | 429s | wall (s) | note |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        oldest = f"{row['oldest_h']:.2f}" if row["oldest_h"] is not None and row["outcome"] == "pushed" else "-"
        state_oldest = f"{row['state_oldest_h']:.2f}" if row["state_oldest_h"] is not None else "-"
        print(f"| {row['number']} | {row['at_h']:.2f} | {row['exit']} | {row['outcome']} | {row['read']} | "
              f"{row['kept']} | {row['vouched']} | {oldest} | {state_oldest} | {row['calls']} | {row['throttled']} | "
              f"{row['wall']:.1f} | "
              f"{row['note']} |")
    pushes = [row for row in rows if row["outcome"] == "pushed"]
    first = pushes[0]["number"] if pushes else None
    later = [row for row in rows if first is not None and row["number"] > first]
    limit_h = full_minutes / 60 + 1
    fresh = [row for row in later if row["outcome"] == "pushed" and row["oldest_h"] is not None
             and row["oldest_h"] < limit_h]
    vouched = [row for row in later if row["outcome"] == "pushed" and row not in fresh and row["vouched"]]
    print()
    rate = PER_MINUTE_ROLES if slowest == "project roles" else PER_MINUTE_OTHERS
    print(f"full read's bound: {slowest} {slowest_calls} calls / {rate} a minute = {full_minutes:.0f} min "
          f"({full_minutes / 60:.2f} h, unscaled)")
    met = first is not None and first <= first_push_bound
    print(f"first push: run {first if first is not None else 'none'}; the issue's bound ⌈{full_minutes:.0f} min / 50 "
          f"min⌉ + 1 = run {first_push_bound}: {'met' if met else 'NOT met'}")
    print(f"later runs: {len(later)}, pushed {sum(row['outcome'] == 'pushed' for row in later)}, every list younger "
          f"than the full read + 1 h ({limit_h:.2f} h) in {len(fresh)}, the older ones vouched for by the audit log "
          f"(--max-age {max_age} s is that bound) in {len(vouched)}: "
          f"{'met' if later and len(fresh) + len(vouched) == len(later) else 'NOT met' if later else 'no later runs'}")
    print("list files per endpoint at the end, of a full read's: " + ", ".join(
        f"{family} {per_family[family.replace(' ', '_').lower()]}/{calls}"
        for family, calls in full_read_calls(org).items()))
    print(f"state directory: {du} KiB on disk (du -sk; {apparent} KiB apparent), {files} list files; "
          f"{int(du) / max(args.users, 1):.2f} KiB per user")
    print("ages: at the run's end, unscaled; 'oldest list pushed' from the summary's oldest_read (whole seconds: "
          f"±{1 / scale / 3600:.2f} h), 'oldest state file' from the list files' modification times")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 minute), {os.getloadavg()[1]:.1f} (5 minutes)")


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
    gc.disable()  # as discover() does
    try:
        vo.serialize_application(vo.build_application(snapshot).application)
    finally:
        gc.enable()
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
    parser.add_argument("--workers", default=f"1,{vo.OPTION['max_workers'].default}",
                        help="comma-separated worker counts")
    parser.add_argument("--scaling", action="store_true", help="only measure mapping time at N and 10N")
    parser.add_argument("--push", action="store_true", help="also push to a fake Veza (memory includes the push)")
    parser.add_argument("--state-dir", nargs="?", const="",
                        help="pass --state-dir to the connector: DIR (kept; run again for a resumed run), or with no "
                        "DIR a fresh temporary one; every worker count's run uses it in turn; prints its size")
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
    limits.add_argument("--pacing-table", action="store_true",
                        help="issue 25's pacing models (per minute, scaled by --minute-scale; per second, in real "
                        "time) on the --models-table organization: a Markdown table and a JSON line a row")
    limits.add_argument("--floor-runs", type=int, default=3,
                        help="--pacing-table: runs without a limit per scale; the fastest is the floor (default 3)")
    limits.add_argument("--minute-scale", type=float, default=0.1,
                        help="--pacing-table: VEZA_OPENAI_TIME_SCALE of the per-minute models (default 0.1: a minute "
                        "is 6 s, so the process's own start and mapping, about half a second, are not half a minute)")
    limits.add_argument("--spent-projects", type=int, default=60, help="--pacing-table: spent-windows' projects")
    limits.add_argument("--spent-role-assignments", choices=("none", "auto", "all"), default="auto",
                        help="--pacing-table: spent-windows' --role-assignments (default auto, the Quick start's)")
    limits.add_argument("--models", help="comma-separated models for --models-table or --pacing-table (default: all)")
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
    limits.add_argument("--table-workers", type=int, default=vo.OPTION["max_workers"].default)
    limits.add_argument("--table-latency", type=float, default=0.005,
                        help="seconds added to every answer in --models-table (default 5 ms: 500 ms at time scale "
                        "0.01, so latency, windows and waits keep the real API's proportions)")
    limits.add_argument("--resumable", action="store_true",
                        help="issue 29: a run every (scaled) hour with --max-run-time 50 min on one state "
                        "directory, behind 7 a minute on project roles and 60 elsewhere (scaled by --time-scale), "
                        "pushed to a fake Veza; custom roles, so every user's roles are read: a table of the runs")
    limits.add_argument("--runs", type=int, default=11, help="--resumable: how many runs (default 11)")
    limits.add_argument("--full-read", action="store_true",
                        help="--resumable: instead, time one uninterrupted run (no state, no --max-run-time)")
    limits.add_argument("--resumable-logs", help="--resumable: write each run's log (stderr) in this directory")
    limits.add_argument("--model-timeout", type=float,
                        help="seconds a run may take in --models-table (default 300) or --pacing-table (default 180)")
    args = parser.parse_args()
    if args.scaling:
        scaling(args.users // 10, args.projects // 10)
        return
    if args.pacing_table:
        pacing_table(args)
        return
    if args.resumable:
        resumable(args)
        return
    if args.models_table:
        args.model_timeout = args.model_timeout or 300.0
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
        state = None if args.state_dir is None else Path(args.state_dir or Path(workdir) / "state")
        if state is not None:
            extra_args += ("--state-dir", str(state))
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
            if state is not None:
                size = subprocess.run(["du", "-sk", str(state)], capture_output=True, text=True).stdout.split()[0]
                print(f"state directory {'(kept) ' * bool(args.state_dir)}{state}: {size} KiB on disk (du -sk), "
                      f"{state_files(state)[0]} list files")
            payloads.append(result["payload"].read_bytes())
            fake.peak_in_flight = 0
        if veza is not None:
            print(f"pushed {len(veza.pushes)} payload(s) of {len(payloads[-1]):,} bytes of JSON")
            veza.stop()
    if len(payloads) > 1:
        print(f"payloads byte-identical across worker counts: {all(p == payloads[0] for p in payloads)}")
    fake.stop()


if __name__ == "__main__":
    main()
