"""``anytime policy``, ``hold`` and ``release`` end to end on real repositories: set
field by field, shown, refused with plain errors, made while ``protect`` holds the
writer lock, and kept by a rebuild of the index (``check --repair``)."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from conftest import TEST_OPTIONS
from treeutil import Protecting

from anytime.capture import snapshot
from anytime.store import clock, policies
from anytime.store.errors import UsageError
from anytime.store.repo import Repository, hold_writer_lock
from anytime.store.retention import Hold, PathRule, Policy, parse_duration
from anytime.store.timeline import label_instant, set_label
from anytime.store.volumes import get_volume


def shown(anytime, path) -> dict:
    return json.loads(anytime("policy", path, "--json", check=0).stdout)


@pytest.fixture
def vol(anytime, src_dir):
    """An initialised repository whose volume 'src' has one commit, labelled 'first'."""
    anytime("init", check=0)
    (src_dir / "f").write_text("v1\n")
    anytime("snapshot", src_dir, "--label", "first", check=0)
    return src_dir


def test_no_policy_keeps_everything_and_says_so(anytime, vol):
    out = anytime("policy", vol, check=0).stdout.decode()
    assert out == "src: no retention policy: every commit is kept\nholds: none\n"
    assert shown(anytime, vol) == {"volume": "src", "policy": None, "holds": []}


def test_policy_fields_are_set_one_by_one_and_kept(anytime, vol):
    anytime("policy", vol, "--keep-all", "48h", "--hourly", "7d", "--yearly", "7y", check=0)
    anytime("policy", "src", "--daily", "30d", "--max-size", "1.5T", check=0)
    anytime("policy", vol, "--keep-labels", "no", "--hourly", "10d", check=0)
    pol = shown(anytime, vol)["policy"]
    assert pol == {"keep_all": "48h", "hourly": "10d", "daily": "30d", "weekly": None,
                   "monthly": None, "yearly": "7y", "max_age": None, "max_size": 3 << 39,
                   "keep_labels": False, "rules": []}
    text = anytime("policy", vol, check=0).stdout.decode()
    assert "  hourly      10d\n" in text and "  max-size    1.5T (1649267441664 bytes)\n" in text
    assert "  keep-labels no\n" in text
    anytime("policy", vol, "--clear", check=0)
    assert shown(anytime, vol)["policy"] is None


def test_path_rules_are_set_merged_and_cleared(anytime, vol):
    anytime("policy", vol, "--daily", "30d", check=0)
    anytime("policy", vol, "--path", "finance/**", "--yearly", "10y", check=0)
    anytime("policy", vol, "--path", "finance/**", "--max-age", "12y", check=0)
    anytime("policy", vol, "--path", "*.tmp", "--max-age", "7d", check=0)
    rules = shown(anytime, vol)["policy"]["rules"]
    assert [(r["pattern"], r["yearly"], r["max_age"]) for r in rules] == [
        ("finance/**", "10y", "12y"), ("*.tmp", None, "7d")]
    text = anytime("policy", vol, check=0).stdout.decode()
    assert "  path 'finance/**': yearly 10y, max-age 12y\n" in text
    anytime("policy", vol, "--path", "finance/**", "--clear", check=0)
    pol = shown(anytime, vol)["policy"]
    assert [r["pattern"] for r in pol["rules"]] == ["*.tmp"] and pol["daily"] == "30d"


@pytest.mark.parametrize("args,code,message", [
    (["--daily", "30"], 2, b"'30' is not a duration (no unit)"),
    (["--daily=-3d"], 2, b"is not a duration (negative)"),
    (["--hourly", "0h"], 2, b"is not a duration (zero)"),
    (["--max-size", "lots"], 2, b"'lots' is not a size"),
    (["--path", "a/**", "--max-size", "1G"], 2, b"--max-size and --keep-labels are the volume"),
    (["--path", "a/**"], 2, b"--path needs a tier option"),
    (["--path", "!a", "--daily", "1d"], 2, b"negation"),
    (["--clear", "--daily", "1d"], 2, b"--clear removes"),
    (["--path", "nope/**", "--clear"], 2, b"the policy has no rule for 'nope/**'"),
    (["--keep-labels", "maybe"], 2, b"invalid choice"),
])
def test_policy_refusals_are_plain(anytime, vol, args, code, message):
    r = anytime("policy", vol, *args, check=code)
    assert message in r.stderr
    assert shown(anytime, vol)["policy"] is None  # nothing was changed


def test_policy_of_an_unknown_volume(anytime, vol):
    r = anytime("policy", "nosuch", "--daily", "1d", check=12)
    assert b"not a volume" in r.stderr


def test_holds_are_made_listed_and_released(anytime, vol):
    hid = anytime("hold", vol, "first", check=0).stdout.decode().strip()
    assert hid.startswith("h") and len(hid) == 7
    rid = anytime("hold", vol, "--from=-1h", "--until", "2099-01-01", check=0).stdout.strip()
    holds = json.loads(anytime("hold", vol, "--json", check=0).stdout)
    by_id = {h["id"]: h for h in holds}
    assert set(by_id) == {hid, rid.decode()}
    assert by_id[hid]["label"] == "first" and by_id[hid]["from_ns"] == by_id[hid]["to_ns"]
    assert by_id[hid]["until"] is None and by_id[rid.decode()]["until"].startswith("2099-01-01")
    text = anytime("hold", vol, check=0).stdout.decode()
    assert f"  {hid}  label 'first' (" in text and "until released" in text
    # a held label can be neither removed nor moved
    r = anytime("unmark", vol, "first", check=1)
    assert f"label 'first' is held (hold {hid})".encode() in r.stderr
    r = anytime("mark", vol, "first", "--force", check=1)
    assert f"hold {hid}".encode() in r.stderr
    anytime("release", vol, "first", check=0)  # by label
    anytime("unmark", vol, "first", check=0)
    anytime("release", vol, rid, check=0)  # by id
    assert json.loads(anytime("hold", vol, "--json", check=0).stdout) == []
    r = anytime("release", vol, rid, check=1)
    assert b"has no hold" in r.stderr


@pytest.mark.parametrize("args,code,message", [
    (["nolabel"], 1, b"has no label 'nolabel'"),
    (["first", "--from=-1h"], 2, b"not both"),
    (["--to=-1h"], 2, b"--to needs --from"),
    (["--from=-1h", "--to=-2h"], 2, b"is before --from"),
    (["first", "--until", "2001-01-01"], 2, b"is not in the future"),
    (["--from", "not an instant"], 14, b""),
])
def test_hold_refusals_are_plain(anytime, vol, args, code, message):
    r = anytime("hold", vol, *args, check=code)
    assert message in r.stderr
    assert json.loads(anytime("hold", vol, "--json", check=0).stdout) == []


def test_an_expired_hold_no_longer_protects_its_label(anytime, vol, repo_dir):
    with Repository.open(str(repo_dir)) as repo:
        with repo.read_txn() as txn:
            v = get_volume(repo, txn, "src")
            t = label_instant(repo, txn, v.id, "first")
        policies.add_hold(repo, v.id, Hold("hx", t, t, label="first", until_ns=2))
        with pytest.raises(UsageError, match="already has a hold hx"):
            policies.add_hold(repo, v.id, Hold("hx", 1, 1))
        with pytest.raises(UsageError, match="label 'first' does not name the instant"):
            policies.add_hold(repo, v.id, Hold("hy", t - 1, t - 1, label="first"))
    anytime("unmark", vol, "first", check=0)
    assert "ended 1970-01-01" in anytime("hold", vol, check=0).stdout.decode()


def settings_everywhere(anytime, path) -> dict:
    """Set a policy with rules and holds, one released; returns what 'policy' shows."""
    anytime("policy", path, "--keep-all", "48h", "--monthly", "1y6M", "--max-size", "2G",
            check=0)
    anytime("policy", path, "--path", "db/*.sqlite", "--keep-all", "7d", check=0)
    anytime("policy", path, "--path", "tmp/**", "--max-age", "1d", check=0)
    anytime("policy", path, "--path", "tmp/**", "--clear", check=0)
    anytime("hold", path, "first", check=0)
    gone = anytime("hold", path, "--from=-2h", check=0).stdout.strip()
    anytime("hold", path, "--from=-1h", "--until", "2098-05-05", check=0)
    anytime("release", path, gone, check=0)
    return shown(anytime, path)


def test_settings_survive_a_rebuild_of_the_index(anytime, vol, repo_dir):
    before = settings_everywhere(anytime, vol)
    assert len(before["holds"]) == 2 and len(before["policy"]["rules"]) == 1
    assert anytime("check", check=0).stdout.endswith(b"no problems found\n")
    shutil.rmtree(repo_dir / "index")
    r = anytime("check", "--repair", check=0)
    assert b"3 retention settings" in r.stdout  # the policy and two holds
    assert shown(anytime, vol) == before
    assert anytime("check", check=0).stdout.endswith(b"no problems found\n")
    r = anytime("unmark", vol, "first", check=1)  # the hold still holds the label
    assert b"is held" in r.stderr


def test_settings_while_protect_holds_the_writer_lock(anytime, vol, repo_dir):
    pr = Protecting(repo_dir, [vol], "anytime: watching")
    try:
        before = settings_everywhere(anytime, vol)  # each one served by protect
        r = anytime("unmark", vol, "first", check=1)
        assert b"is held" in r.stderr
        r = anytime("snapshot", vol, check=11)  # the lock is taken all the same
    finally:
        assert pr.stop(signal.SIGTERM) == 0
    assert shown(anytime, vol) == before
    assert anytime("check", check=0).stdout.endswith(b"no problems found\n")
    shutil.rmtree(repo_dir / "index")
    anytime("check", "--repair", check=0)
    assert shown(anytime, vol) == before


def test_the_store_api_round_trips(vol, repo_dir):
    pol = Policy(daily=parse_duration("30d"), rules=(PathRule("a/**", yearly=parse_duration(
        "3y")),))
    with Repository.open(str(repo_dir)) as repo:
        with repo.read_txn() as txn:
            v = get_volume(repo, txn, "src")
            assert policies.get_policy(repo, txn, v.id) is None
            t = label_instant(repo, txn, v.id, "first")
        policies.set_policy(repo, v.id, pol)
        policies.add_hold(repo, v.id, Hold("h1", 5, 9, created_ns=3))
        policies.add_hold(repo, v.id, Hold("h2", t, t, label="first"))
        with repo.read_txn() as txn:
            assert policies.get_policy(repo, txn, v.id) == pol
            assert policies.list_holds(repo, txn, v.id) == [Hold("h1", 5, 9, created_ns=3),
                                                           Hold("h2", t, t, label="first")]
            assert policies.hold_of_label(repo, txn, v.id, "first", 0).id == "h2"
            assert policies.new_hold_id(repo, txn, v.id) not in ("h1", "h2")
        assert policies.release_hold(repo, v.id, "h1")
        assert not policies.release_hold(repo, v.id, "h1")
        policies.set_policy(repo, v.id, None)
        with repo.read_txn() as txn:
            assert policies.get_policy(repo, txn, v.id) is None
            assert [h.id for h in policies.list_holds(repo, txn, v.id)] == ["h2"]


def test_settings_wait_for_no_snapshot(anytime, vol, repo_dir):
    """Another writer holding the lock without serving requests (a snapshot): exit 11,
    nothing changed; showing goes on."""
    with hold_writer_lock(str(repo_dir)):
        r = anytime("policy", vol, "--daily", "1d", check=11)
        assert b"writer lock" in r.stderr or b"pid" in r.stderr
        anytime("hold", vol, "first", check=11)
        assert shown(anytime, vol) == {"volume": "src", "policy": None, "holds": []}


def test_the_plan_of_a_real_volume(src_dir, tmp_path):
    """A history made with a driven clock (a commit every 6 hours for 8 days), a label and
    a hold in the index: plan_volume plans what retention.plan says of them."""
    ns, day = 1_000_000_000, 86400 * 1_000_000_000
    now = 1_796_212_800 * ns  # 2026-12-02T12:00:00Z
    repo = Repository.init(str(tmp_path / "r"), options=TEST_OPTIONS)
    try:
        instants = []
        for k in range(32):
            t = now - 8 * day + k * day // 4 + 1
            clock.set_clock(lambda t=t: t)
            (src_dir / "f").write_text(f"version {k}\n")
            snapshot(repo, str(src_dir))
            instants.append(t)
        clock.set_clock(None)
        with repo.read_txn() as txn:
            v = get_volume(repo, txn, "src")
        set_label(repo, v.id, "old", instants[1] + 5)
        policies.add_hold(repo, v.id, Hold("h1", instants[2], instants[3]))
        policies.set_policy(repo, v.id, Policy(daily=parse_duration("3d")))
        with repo.read_txn() as txn:
            assert policies.plan_commits(repo, txn, v.id) == [(t, None) for t in instants]
            p = policies.plan_volume(repo, txn, v.id, now, tz=None)
        daily = {t for t in instants if t > now - 3 * day and
                 (t // day != (t + day // 4) // day or t == instants[-1])}
        assert set(p.keep) == daily | {instants[1], instants[2], instants[3]}
        assert p.keep[instants[1]].reasons == ("label:old",)
        assert p.keep[instants[2]].reasons == ("hold:h1",)
        assert p.drop == [t for t in instants if t not in p.keep]
    finally:
        repo.close()


def test_a_timed_commit_is_planned_with_its_interior(tmp_path):
    """A timed commit (as the shim makes: records at their operations' instants) is
    planned with its interior after the commit before it; a label inside the interior
    keeps it whole, and without one a tier keeps it as a point."""
    from anytime.capture.scan import Scanner
    from anytime.store.format import KIND_FILE, Entry
    from anytime.store.session import WriterSession
    from anytime.store.volumes import volume_for_source

    src = tmp_path / "src"
    src.mkdir()
    Repository.init(str(tmp_path / "repo"), options=TEST_OPTIONS)
    with Repository.open(str(tmp_path / "repo"), TEST_OPTIONS) as repo:
        with WriterSession(repo) as session:
            vol = volume_for_source(repo, str(src), "v", clock.now_ns())
            Scanner(repo, vol, os.fsencode(src), session=session).run({"kind": "test"})
            b = session.builder(vol)
            scan_t = vol.horizon
            for i, name in enumerate([b"a", b"b"]):
                e = Entry(KIND_FILE, mode=0o100644)
                e.file_id, e.size = b.new_file_id(), 1
                b.put_block_version(e.file_id, 0, b.store_chunk(name), at=scan_t + 10 + i)
                b.put_entry(name, e, at=scan_t + 10 + i)
            timed_t = b.commit({"kind": "test"})
        with repo.read_txn() as txn:
            assert policies.plan_commits(repo, txn, vol.id) == [(scan_t, None),
                                                                 (timed_t, scan_t)]
        policies.set_policy(repo, vol.id, Policy(daily=parse_duration("1d")))
        now = timed_t + 1
        with repo.read_txn() as txn:
            p = policies.plan_volume(repo, txn, vol.id, now)
        assert p.keep[timed_t].reasons == ("latest", "daily") and not p.keep[timed_t].whole
        set_label(repo, vol.id, "between", scan_t + 10)  # after a, before b
        with repo.read_txn() as txn:
            p = policies.plan_volume(repo, txn, vol.id, now)
        assert p.keep[timed_t].whole and "label:between" in p.keep[timed_t].reasons
        assert "label:between" in p.keep[scan_t].reasons
