"""Reading: the read plan follows the catalogue, and the scheduler's answer rules, without any socket.

The read plan is driven by a scheduler stand-in that answers each read at once from a table of paths;
the scheduler's rules (what an answer means, what a page must look like, where the next page starts)
are pure functions.
"""

from __future__ import annotations

from collections import defaultdict, deque
from types import SimpleNamespace

import pytest

import veza_openai as vo


class AnsweringScheduler:
    """Answers every read at once: `answers` maps a path to its items (a list), an object (a dict), or an HTTP
    status the plan must judge (an int). A path not listed answers an empty list (or an empty object)."""

    def __init__(self, answers: dict[str, object], last: tuple[str, ...] = ()) -> None:
        self.answers = answers
        self.last = last  # paths answered only once nothing else waits (an answer that arrives late)
        self.waiting: deque[vo.ListRead] = deque()
        self.open_reads: dict[str, int] = defaultdict(int)
        self.finished_reads: dict[str, int] = defaultdict(int)
        self.paths: list[str] = []
        self.params: dict[str, dict] = {}
        self.pacers = defaultdict(lambda: SimpleNamespace(requests_per_second=lambda *_: None))

    def slowest_rate_for(self, names: list[str]) -> None:
        return None  # no rate seen: no estimate

    def start(self, plan: vo.ReadPlan) -> None:
        self.plan = plan

    def close(self) -> None:
        pass

    def add(self, read: vo.ListRead) -> None:
        self.open_reads[read.family.name] += 1
        self.waiting.append(read)
        self.params[read.path] = read.params

    def finish(self, read: vo.ListRead, result: object) -> None:
        self.open_reads[read.family.name] -= 1
        self.finished_reads[read.family.name] += 1
        read.on_done(read, result)

    def drop_waiting(self, family: vo.Family) -> None:
        for read in [read for read in self.waiting if read.family is family]:
            self.waiting.remove(read)
            self.finish(read, None)

    def run_until_read(self) -> None:
        while self.waiting:
            read = next((read for read in self.waiting if read.path not in self.last), self.waiting[0])
            self.waiting.remove(read)
            self.paths.append(read.path)
            answer = self.answers.get(read.path, [] if read.family.cursor else {})
            if isinstance(answer, int):
                self.plan.refused(read, vo.Answer(answer, detail="refused by the test"))
            else:
                self.finish(read, answer)


def config(**settings) -> vo.Config:
    return vo.Config(org_id="org-plan", openai_api_key="sk-admin-plan-0000000000000000", activity_days=0,
                     **settings)


def read_with(answers: dict[str, object], last: tuple[str, ...] = (),
              **settings) -> tuple[vo.Snapshot, AnsweringScheduler, vo.ReadPlan]:
    scheduler = AnsweringScheduler(answers, last)
    plan = vo.ReadPlan(config(**settings), scheduler)
    return plan.read(), scheduler, plan


USERS = [{"id": "u1", "role": "owner"}, {"id": "u2", "role": "reader"}]
PROJECTS = [{"id": "p1", "status": "active"}, {"id": "p2", "status": "archived"}]
ORG = {"/organization/users": USERS, "/organization/projects": PROJECTS,
       "/organization/groups": [{"id": "g1"}],
       "/organization/projects/p1/users": [{"id": "u2", "role": "member"}],
       "/organization/projects/p1/groups": [{"group_id": "g1"}]}
CUSTOM_ROLE = [{"id": "role-custom", "predefined_role": False, "permissions": ["api.x.read"]}]


def test_every_family_without_a_parent_is_read_once_and_each_child_once_per_parent_item():
    snapshot, scheduler, _ = read_with(ORG, role_assignments="none")
    starting = [family for family in vo.STARTING_FAMILIES if not family.activity_window]
    assert [p for p in scheduler.paths[:len(starting)]] == [f.path_for(None, "org-plan") for f in starting]
    per_project = [family for family in vo.FAMILY_LIST if family.parent == "projects"]
    for pid in ("p1", "p2"):
        for family in per_project:
            assert scheduler.paths.count(family.path_for(pid, "org-plan")) == 1, (family.name, pid)
    assert "/organization/groups/g1/users" in scheduler.paths and "/organization/groups/g1/roles" in scheduler.paths
    assert "/projects/p1/groups/g1/roles" in scheduler.paths  # a child of a child: keyed by (project, group)
    assert len(scheduler.paths) == len(set(scheduler.paths))
    assert snapshot.project_users == {"p1": [{"id": "u2", "role": "member"}], "p2": []}
    assert snapshot.project_group_roles == {("p1", "g1"): []}


def test_every_read_carries_its_familys_parameters_and_largest_page():
    _, scheduler, _ = read_with(ORG, role_assignments="none")
    assert scheduler.params["/organization/projects"] == {"include_archived": "true", "limit": 100}
    assert scheduler.params["/organization/projects/p1/api_keys"] == {"owner_project_access": "any", "limit": 100}
    assert scheduler.params["/organizations/org-plan"] == {}  # one object: no page size


@pytest.mark.parametrize(("mode", "roles", "reads_assignments"), [
    ("auto", [], False), ("auto", CUSTOM_ROLE, True), ("all", [], True), ("none", CUSTOM_ROLE, False)])
def test_role_assignment_reads_wait_for_the_role_lists_and_follow_the_mode(mode, roles, reads_assignments):
    snapshot, scheduler, plan = read_with({**ORG, "/projects/p2/roles": roles}, role_assignments=mode)
    user_reads = [p for p in scheduler.paths if p.startswith("/organization/users/") and p.endswith("/roles")]
    member_reads = [p for p in scheduler.paths if p.startswith("/projects/p1/users/")]
    assert (user_reads, member_reads) == ((["/organization/users/u1/roles", "/organization/users/u2/roles"],
                                           ["/projects/p1/users/u2/roles"]) if reads_assignments else ([], []))
    assert (snapshot.user_roles is not None) == reads_assignments
    assert plan.role_decision is reads_assignments


@pytest.mark.parametrize("mode", ["all", "auto"])
@pytest.mark.parametrize("roles_answer_last", [False, True])
def test_a_refused_roles_api_skips_the_role_assignment_reads_whenever_its_refusal_arrives(mode, roles_answer_last,
                                                                                           caplog):
    """Even when a project's custom roles arrive before the organization's roles list is refused."""
    answers = {**ORG, "/organization/roles": 403, "/projects/p1/roles": CUSTOM_ROLE}
    last = ("/organization/roles",) if roles_answer_last else ()
    caplog.set_level("INFO", logger="veza_openai")
    _, scheduler, _ = read_with(answers, last, role_assignments=mode)
    assert scheduler.paths.index("/projects/p1/roles") < scheduler.paths.index("/organization/roles") or \
        not roles_answer_last
    assert not any(p.startswith("/organization/users/") or "/users/u" in p for p in scheduler.paths)
    assert "per-user role assignments skipped: the Roles API is not available to this key" in caplog.text


def test_a_404_on_one_projects_list_and_on_the_project_itself_drops_only_that_project():
    snapshot, scheduler, _ = read_with({**ORG, "/organization/projects/p1/api_keys": 404,
                                        "/organization/projects/p1": 404}, role_assignments="none")
    assert snapshot.deleted == [(vo.Kind.PROJECT, "p1", "/organization/projects/p1/api_keys")]
    assert "project_api_keys" not in snapshot.unavailable
    assert scheduler.paths.count("/organization/projects/p1") == 1


@pytest.mark.parametrize("first_404", ["/projects/p1/roles", "/organization/projects/p1/users"])
def test_a_deleted_entity_is_reported_the_same_whichever_404_came_first(first_404):
    answers = {**ORG, "/organization/projects/p1/users": 404, "/projects/p1/roles": 404,
               "/organization/projects/p1": 404}
    others = ("/organization/projects/p1/users", "/projects/p1/roles")
    snapshot, _, _ = read_with(answers, tuple(p for p in others if p != first_404), role_assignments="none")
    assert snapshot.deleted[0] == (vo.Kind.PROJECT, "p1", "/organization/projects/p1/users")  # catalogue order


@pytest.mark.parametrize("status", [403, 401])
def test_a_project_whose_own_object_cannot_say_is_never_dropped_as_deleted(status):
    answers = {**ORG, "/organization/projects/p1/api_keys": 404, "/organization/projects/p1": status}
    if status == 401:
        with pytest.raises(vo.DiscoveryError,
                           match=r"the key from OPENAI_API_KEY \(HTTP 401 .*\): it must be an Admin API key"):
            read_with(answers, role_assignments="none")
        return
    snapshot, _, _ = read_with(answers, role_assignments="none")
    assert snapshot.deleted == []
    assert snapshot.project_api_keys is None
    assert "project p1 may still exist (HTTP 403" in snapshot.unavailable["project_api_keys"]


def test_a_404_on_a_list_while_its_entity_exists_leaves_the_family_out_in_one_object_read():
    answers = {**ORG, "/organization/projects/p1/certificates": 404, "/organization/projects/p2/certificates": 404,
               "/organization/projects/p1": {"id": "p1"}}
    snapshot, scheduler, _ = read_with(answers, role_assignments="none")
    assert snapshot.project_certificates is None and snapshot.deleted == []
    assert [p for p in scheduler.paths if p in ("/organization/projects/p1", "/organization/projects/p2")] == \
        ["/organization/projects/p1"]


def test_an_archived_projects_400_is_an_empty_list_and_any_other_400_fails_the_run():
    snapshot, _, _ = read_with({**ORG, "/organization/projects/p2/users": 400}, role_assignments="none")
    assert snapshot.project_users["p2"] == []
    with pytest.raises(vo.DiscoveryError, match="/organization/projects/p1/users: HTTP 400"):
        read_with({**ORG, "/organization/projects/p1/users": 400}, role_assignments="none")


def test_a_404_on_model_permissions_is_no_settings_not_a_deleted_project():
    snapshot, scheduler, _ = read_with({**ORG, "/organization/projects/p1/model_permissions": 404},
                                       role_assignments="none")
    assert snapshot.deleted == [] and "p1" not in snapshot.model_permissions
    assert "/organization/projects/p1" not in scheduler.paths


@pytest.mark.parametrize(("status", "message"), [(403, "must be an Admin API key"), (404, "check OPENAI_ORG_ID")])
def test_the_required_users_family_refused_or_missing_fails_the_run(status, message):
    with pytest.raises(vo.DiscoveryError, match=message):
        read_with({**ORG, "/organization/users": status})


def test_a_refused_optional_family_leaves_only_its_property_unset():
    snapshot, _, _ = read_with({**ORG, "/organizations/org-plan": 403}, role_assignments="none")
    assert snapshot.organization is None and snapshot.unavailable == {}


def test_the_catalogue_declares_every_parent_and_path_placeholder_consistently():
    for family in vo.FAMILY_LIST:
        names = family.path.count("{")
        if family.parent:
            parent = vo.FAMILIES[family.parent]
            depth = 1 + (1 if parent.parent else 0)
            assert names == depth, family.name
            assert family.per is not None, family.name
        elif family.not_found is vo.On404.EXISTENCE:
            assert any(kind.object_family == family.name for kind in vo.Kind), family.name
    for kind in vo.Kind:
        assert kind.object_family is None or vo.FAMILIES[kind.object_family].not_found is vo.On404.EXISTENCE


# --- the scheduler's rules, pure ------------------------------------------------------------------

def answer(status: int, **fields) -> vo.Answer:
    return vo.Answer(status, **fields)


@pytest.mark.parametrize(("given", "verdict"), [
    (answer(200, body={}), vo.Verdict.PAGE),
    (answer(200, fatal=True), vo.Verdict.FAILED),
    (answer(429), vo.Verdict.THROTTLED),
    (answer(429, should_retry=False), vo.Verdict.FAILED),
    (answer(400), vo.Verdict.REFUSED),
    (answer(400, should_retry=True), vo.Verdict.RETRY),
    (answer(401), vo.Verdict.REFUSED), (answer(403), vo.Verdict.REFUSED), (answer(404), vo.Verdict.REFUSED),
    (answer(408), vo.Verdict.RETRY), (answer(409), vo.Verdict.RETRY), (answer(503), vo.Verdict.RETRY),
    (answer(503, should_retry=False), vo.Verdict.FAILED), (answer(0), vo.Verdict.RETRY),
    (answer(0, fatal=True), vo.Verdict.FAILED), (answer(422), vo.Verdict.FAILED),
])
def test_each_answer_has_one_meaning(given, verdict):
    assert vo.classify(given) is verdict


def test_a_page_must_be_a_list_of_the_documented_items_within_the_page_size():
    users = vo.FAMILIES["users"]
    items = [{"object": "organization.user", "id": "u1"}]
    assert vo.check_page(users, {"object": "list", "data": items}, "/u", 100) == items
    with pytest.raises(vo.DiscoveryError, match="expected organization.user items"):
        vo.check_page(users, {"data": [{"object": "organization.invite"}]}, "/u", 100)
    with pytest.raises(vo.DiscoveryError, match="a page of 2 items for limit=1"):
        vo.check_page(users, {"data": items * 2}, "/u", 1)
    with pytest.raises(vo.DiscoveryError, match="not a list of objects"):
        vo.check_page(users, {"data": ["u1"]}, "/u", 100)


@pytest.mark.parametrize(("family", "body", "cursor"), [
    ("users", {"last_id": "u9"}, "u9"),
    ("admin_api_keys", {}, "k2"),
    ("groups", {"next": "n1"}, "n1"),
    ("groups", {}, "k2"),  # the SDK documents `after` as the last item's id when `next` is missing
])
def test_the_next_page_starts_where_the_familys_cursor_style_says(family, body, cursor):
    data = [{"id": "k1"}, {"id": "k2"}]
    assert vo.next_cursor(vo.FAMILIES[family], body, data, "/x") == cursor


def test_a_page_that_says_has_more_without_a_cursor_is_a_server_fault():
    with pytest.raises(vo.DiscoveryError, match="has_more is true but the page has no cursor"):
        vo.next_cursor(vo.FAMILIES["roles"], {}, [{"id": "r1"}], "/x")
