"""The deploy files are sized for one stated organization by the sizing rule of docs/operations.md: the CronJob's
deadlines and memory, the env file's run time and both schedules' intervals follow from the rule, read from the
docs, so new measurements are one edit there (and the tests say which figures of deploy/ to change)."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import pytest
from docs_and_deploy import (
    CRON_FILE,
    CRONJOB,
    ENV_EXAMPLE,
    OPERATIONS,
    README,
    blocks,
    cron_file_entries,
    yaml_documents,
)

MI = 1024**2
MB = 1000**2
UNITS = {"": 1, "k": 1000, "M": MB, "G": 1000**3, "Ki": 1024, "Mi": MI, "Gi": 1024**3}


@dataclass(frozen=True)
class Organization:
    projects: int
    users: int
    memberships: int
    role_assignments_read: bool

    def in_words(self) -> str:
        return (f"{self.projects:,} projects, {self.users:,} users and {self.memberships:,} project memberships, "
                f"with role assignments read" if self.role_assignments_read else "without role assignment reads")


@dataclass(frozen=True)
class SizingRule:
    project_rate: float  # requests a minute on a project's role list
    user_rate: float
    membership_rate: float
    safety: float
    push_seconds: float
    deadline_margin: float
    base_mb: float
    mb_per_10k_users: float
    mb_per_1k_projects: float
    request_factor: float
    request_step_mi: int
    limit_factor: float
    limit_floor_mi: int

    def reading_minutes(self, org: Organization) -> float:
        per_principal = ((org.users / self.user_rate, org.memberships / self.membership_rate)
                         if org.role_assignments_read else ())
        return max([org.projects / self.project_rate, *per_principal])

    def max_run_time(self, org: Organization) -> int:
        return math.ceil(round(self.safety * self.reading_minutes(org) * 60 + self.push_seconds, 6))

    def active_deadline(self, org: Organization) -> int:
        return self.max_run_time(org) + math.ceil(self.deadline_margin)

    def peak_mb(self, org: Organization) -> float:
        return (self.base_mb + self.mb_per_10k_users * org.users / 10_000
                + self.mb_per_1k_projects * org.projects / 1_000)

    def memory_request(self, org: Organization) -> int:
        wanted = self.request_factor * self.peak_mb(org) * MB
        return math.ceil(wanted / (self.request_step_mi * MI)) * self.request_step_mi * MI

    def memory_limit(self, org: Organization) -> int:
        return max(math.ceil(self.limit_factor * self.memory_request(org)), self.limit_floor_mi * MI)


NUMBER = r"([\d.,]+)"
RULE_LINES = {  # the rule's lines in docs/operations.md, each with the numbers it holds
    "time": (rf"reading minutes\s*= max\(projects / {NUMBER}, users / {NUMBER}, project memberships / {NUMBER}\)",
             rf"OPENAI_MAX_RUN_TIME\s*= {NUMBER} x reading minutes x 60 \+ {NUMBER}",
             rf"activeDeadlineSeconds\s*= OPENAI_MAX_RUN_TIME \+ {NUMBER}"),
    "memory": (rf"peak MB\s*= {NUMBER} \+ {NUMBER} x users / 10,000 \+ {NUMBER} x projects / 1,000",
               rf"memory request\s*= {NUMBER} x peak MB, rounded up to a multiple of {NUMBER}Mi",
               rf"memory limit\s*= max\({NUMBER} x memory request, {NUMBER}Mi\)"),
}


def number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_rule(markdown: str) -> SizingRule:
    """The sizing rule as the docs state it, in their ```text blocks."""
    text = "\n".join(block.body for block in blocks(markdown) if block.language == "text")
    values = []
    for lines in RULE_LINES.values():
        for pattern in lines:
            match = re.search(pattern, text)
            assert match, f"the sizing rule in docs/operations.md lacks a line of the form {pattern!r}"
            values += [number(group) for group in match.groups()]
    (project_rate, user_rate, membership_rate, safety, push, margin, base, per_users, per_projects, request_factor,
     step, limit_factor, floor) = values
    return SizingRule(project_rate, user_rate, membership_rate, safety, push, margin, base, per_users, per_projects,
                      request_factor, int(step), limit_factor, int(floor))


@pytest.fixture(scope="module")
def rule() -> SizingRule:
    return parse_rule(OPERATIONS.read_text())


def quantity(value: str | int) -> int:
    """A Kubernetes memory quantity in bytes: 256Mi, 1Gi, 512M, 1000000."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", str(value))
    assert match, f"not a memory quantity: {value!r}"
    return int(match.group(1)) * UNITS[match.group(2) or ""]


def cronjob() -> dict:
    jobs = [doc for doc in yaml_documents(CRONJOB) if doc.get("kind") == "CronJob"]
    assert len(jobs) == 1
    return jobs[0]


def container_env(job: dict) -> dict[str, str]:
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry.get("value") for entry in container["env"]}


SIZING_COMMENT = re.compile(r"^# sizing: projects=(\d+) users=(\d+) project-memberships=(\d+) "
                            r"role-assignments-read=(true|false)$", re.MULTILINE)


def stated_in_comment(text: str) -> Organization:
    found = SIZING_COMMENT.findall(text)
    assert len(found) == 1, "the file states once the organization it is sized for"
    projects, users, memberships, read = found[0]
    return Organization(int(projects), int(users), int(memberships), read == "true")


def stated_in_cronjob(job: dict) -> Organization:
    sizing = job["metadata"]["annotations"]
    return Organization(int(sizing["sizing/projects"]), int(sizing["sizing/users"]),
                        int(sizing["sizing/project-memberships"]), sizing["sizing/role-assignments-read"] == "true")


def env_file_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def cron_fire_times(schedule: list[str]) -> list[int]:
    """The minutes of a week at which a five-field cron schedule fires (numbers, *, */n, a-b, lists)."""
    def values(field: str, low: int, high: int) -> set[int]:
        found: set[int] = set()
        for part in field.split(","):
            spread, _, step = part.partition("/")
            start, end = (low, high) if spread == "*" else (int(spread.split("-")[0]), int(spread.split("-")[-1]))
            found |= set(range(start, end + 1, int(step or 1)))
        return found

    minute, hour, day, month, weekday = schedule
    assert (day, month) == ("*", "*"), "a schedule by the day of the week or finer"
    minutes, hours, weekdays = values(minute, 0, 59), values(hour, 0, 23), values(weekday, 0, 6)
    return sorted(d * 1440 + h * 60 + m for d, h, m in itertools.product(weekdays, hours, minutes))


def shortest_interval_seconds(schedule: list[str]) -> int:
    times = cron_fire_times(schedule)
    return 60 * min(b - a for a, b in zip(times, times[1:] + [times[0] + 7 * 1440]))


# --- one organization, stated everywhere ------------------------------------------------------------------


def test_every_deploy_file_states_the_same_organization_and_the_docs_name_it():
    size = stated_in_cronjob(cronjob())
    assert stated_in_comment(ENV_EXAMPLE.read_text()) == size
    assert stated_in_comment(CRON_FILE.read_text()) == size
    assert size.in_words() in " ".join(OPERATIONS.read_text().split())
    short = (f"{size.projects:,} projects, {size.users:,} users, {size.memberships:,} project memberships, "
             + ("role assignments read" if size.role_assignments_read else "no role assignment reads"))
    assert " ".join(README.read_text().split()).count(short) >= 2, "the README's cron and Kubernetes parts name it"


# --- the CronJob ------------------------------------------------------------------------------------------


def test_the_cronjobs_deadlines_follow_the_rule_for_its_organization(rule):
    job = cronjob()
    size = stated_in_cronjob(job)
    run_time = int(container_env(job)["OPENAI_MAX_RUN_TIME"])
    deadline = job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert (run_time, deadline) == (rule.max_run_time(size), rule.active_deadline(size))


def test_the_cronjobs_memory_follows_the_rule_for_its_organization(rule):
    job = cronjob()
    size = stated_in_cronjob(job)
    resources = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    request, limit = quantity(resources["requests"]["memory"]), quantity(resources["limits"]["memory"])
    expected = (f"{rule.memory_request(size) // MI}Mi", f"{rule.memory_limit(size) // MI}Mi")
    assert (request, limit) == (rule.memory_request(size), rule.memory_limit(size)), f"the rule gives {expected}"
    assert request >= rule.peak_mb(size) * MB and limit >= 1.5 * request


def test_the_cronjobs_schedule_leaves_room_for_a_whole_run(rule):
    spec = cronjob()["spec"]
    deadline = spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert shortest_interval_seconds(spec["schedule"].split()) > deadline + spec["startingDeadlineSeconds"]


# --- Docker and cron ----------------------------------------------------------------------------------


def test_the_env_files_run_time_and_the_cron_interval_follow_the_rule(rule):
    size = stated_in_comment(ENV_EXAMPLE.read_text())
    run_time = int(env_file_values(ENV_EXAMPLE.read_text())["OPENAI_MAX_RUN_TIME"])
    assert run_time == rule.max_run_time(size)
    (schedule, _, _), = cron_file_entries()
    assert shortest_interval_seconds(schedule) > run_time + rule.deadline_margin


# --- the rule as the docs state it ---------------------------------------------------------------------


def test_the_docs_worked_examples_are_what_the_rule_gives(rule):
    text = OPERATIONS.read_text()
    header = "| projects | users | project memberships | role assignments read | reading minutes |"
    assert header in text
    rows = list(itertools.takewhile(lambda row: row.startswith("|"), text.split(header, 1)[1].splitlines()[2:]))
    assert len(rows) >= 3
    for row in rows:
        projects, users, memberships, read, minutes, run_time, deadline = [c.strip() for c in row.strip("|").split("|")]
        org = Organization(int(number(projects)), int(number(users)), int(number(memberships)), read == "yes")
        assert number(minutes) == round(rule.reading_minutes(org), 1), row
        assert (number(run_time), number(deadline)) == (rule.max_run_time(org), rule.active_deadline(org)), row


def test_the_rule_sizes_a_large_organization_past_two_hours(rule):
    # a fixed 7,200 s deadline would stop every run at about 770 projects at 7 requests a minute
    assert rule.max_run_time(Organization(2000, 0, 0, False)) > 2000 / 7 * 60 > 7200
    # role assignment reads count only when they are made
    assert rule.reading_minutes(Organization(10, 60_000, 0, False)) == 10 / rule.project_rate


def test_the_rule_is_read_from_the_docs_numbers():
    stated = OPERATIONS.read_text()
    other = re.sub(r"(peak MB\s*= )(\d+)", lambda match: f"{match[1]}{int(match[2]) + 45}",
                   stated.replace("projects / 7,", "projects / 14,")
                   .replace("max(1.5 x memory request, 512Mi)", "max(2 x memory request, 1024Mi)"))
    base, changed = parse_rule(stated), parse_rule(other)
    big = Organization(2000, 0, 0, False)
    assert changed.reading_minutes(big) == base.reading_minutes(big) / 2
    assert changed.peak_mb(big) == base.peak_mb(big) + 45
    assert changed.limit_floor_mi == 1024 and changed.limit_factor == 2
    with pytest.raises(AssertionError, match="lacks a line"):
        parse_rule(stated.replace("activeDeadlineSeconds = OPENAI_MAX_RUN_TIME", "activeDeadlineSeconds = about"))


def test_the_measured_peaks_in_the_docs_stay_under_the_rule(rule):
    """docs/operations.md (Memory): the peak rule is a bound on what was measured, not a guess below it."""
    text = OPERATIONS.read_text()
    measured = re.search(r"Measured: (.+?)\. The request", text, re.DOTALL).group(1).replace("\n", " ")
    points = re.findall(r"([\d,]+) MB for ([\d,]+) (?:users )?and ([\d,]+)", measured)
    assert len(points) >= 4, measured
    for peak, users, projects in points:
        assert number(peak) <= rule.peak_mb(Organization(int(number(projects)), int(number(users)), 0, False)), peak


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("30 2 * * *", 86400), ("0 */6 * * *", 21600), ("15 2,14 * * *", 43200), ("0 1,3 * * *", 7200),
    ("0 3 * * 1", 7 * 86400), ("*/10 * * * *", 600), ("0 0-5 * * *", 3600)])
def test_the_interval_of_a_schedule_is_its_shortest_gap(schedule, seconds):
    assert shortest_interval_seconds(schedule.split()) == seconds
