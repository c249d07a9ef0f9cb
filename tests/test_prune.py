"""Prune: thinning a volume's history to the commits a plan keeps, and removing what no
kept instant uses. Every kept instant reads exactly as before (every path, metadata and
content), a dropped instant shows the kept commit before it, the dropped data is gone
from the packs, `check` stays clean, and a rebuild of the index from the packs gives the
thinned history, not the old one."""

from __future__ import annotations

import os
import shutil

from conftest import TEST_OPTIONS
from test_repair import _tree, picture
from treeutil import snap

from anytime.store import prune as prune_mod
from anytime.store.repo import Repository
from anytime.store.volumes import get_volume
from anytime.vfs.view import View


def grow_history(anytime, src) -> dict:
    """Six commits of ``src``: a file changed every time, one changed once, one deleted,
    a random file that lives only in the second commit; returns the secret bytes of
    that file, which nothing kept may hold once the second commit is dropped."""
    anytime("init", check=0)
    src.mkdir(exist_ok=True)
    (src / "sub").mkdir()
    (src / "sub" / "keep.txt").write_text("unchanged all along\n")
    (src / "doomed.txt").write_text("deleted at the fourth commit\n")
    secrets = {}
    for i in range(6):
        (src / "log.txt").write_text(f"version {i}\n" * (i + 1))
        if i == 1:
            secrets["only"] = os.urandom(200_000)
            (src / "brief.bin").write_bytes(secrets["only"])
        if i == 2:
            (src / "brief.bin").unlink()
            (src / "sub" / "late.txt").write_text("from the third commit on\n")
        if i == 3:
            (src / "doomed.txt").unlink()
        snap(anytime, src)
    return secrets


def run_prune(repo_dir, keep: list[int], **kw) -> prune_mod.PruneReport:
    """Prune volume ``src`` to the commits at instants ``keep``."""
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        return prune_mod.prune(repo, {vol.id: dict.fromkeys(keep, True)}, **kw)


def tree_at(repo_dir, instant: int) -> dict:
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        return _tree(View(repo, vol, instant))


def in_packs(repo_dir, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in repo_dir.glob("packs/*/*.pack"))


def test_kept_instants_read_as_before_and_dropped_data_is_gone(anytime, tmp_path):
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    secrets = grow_history(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    assert len(instants) == 6
    assert in_packs(repo_dir, secrets["only"][1000:1100])

    rep = run_prune(repo_dir, [instants[i] for i in (0, 3, 5)])
    assert rep.commits_dropped == 3 and rep.versions_deleted > 0 and rep.chunks_deleted >= 1

    after = picture(repo_dir)["src"]
    assert [t for t, _ in after["commits"]] == [instants[i] for i in (0, 3, 5)]
    for i in (0, 3, 5):
        assert after["at"][instants[i]] == before[instants[i]], f"commit {i} changed"
    # a dropped instant shows the kept commit before it
    assert tree_at(repo_dir, instants[1]) == before[instants[0]]
    assert tree_at(repo_dir, instants[4]) == before[instants[3]]
    assert not in_packs(repo_dir, secrets["only"][1000:1100]), "dropped data stays in packs"
    r = anytime("check", "--read-data")
    assert r.returncode == 0 and b"no problems found" in r.stdout, r.stdout + r.stderr

    # the packs say the same as the index: a rebuild gives the thinned history
    shutil.rmtree(repo_dir / "index")
    r = anytime("check", "--repair")
    assert r.returncode == 0, r.stderr
    rebuilt = picture(repo_dir)["src"]
    assert [t for t, _ in rebuilt["commits"]] == [t for t, _ in after["commits"]]
    assert rebuilt["at"] == after["at"]


def test_a_second_prune_thins_what_the_first_kept(anytime, tmp_path):
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    run_prune(repo_dir, [instants[i] for i in (0, 2, 3, 5)])
    rep = run_prune(repo_dir, [instants[3], instants[5]])
    assert rep.commits_dropped == 2
    after = picture(repo_dir)["src"]
    assert [t for t, _ in after["commits"]] == [instants[3], instants[5]]
    assert after["at"][instants[3]] == before[instants[3]]
    assert after["at"][instants[5]] == before[instants[5]]
    assert tree_at(repo_dir, instants[0]) == {}  # before the first kept commit: nothing
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout
    shutil.rmtree(repo_dir / "index")
    anytime("check", "--repair", check=0)
    assert picture(repo_dir)["src"]["at"] == after["at"]


def test_dry_run_changes_nothing_and_says_what_would_go(anytime, tmp_path):
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    before = picture(repo_dir)
    instants = sorted(before["src"]["at"])
    packs = sorted(p.name for p in repo_dir.glob("packs/*/*.pack"))
    keep = [instants[i] for i in (0, 3, 5)]
    dry = run_prune(repo_dir, keep, dry_run=True)
    assert picture(repo_dir) == before
    # it lists the path versions no kept instant shows
    assert {(p, t) for _v, p, t in dry.gone} == {
        (b"log.txt", instants[1]), (b"log.txt", instants[2]), (b"log.txt", instants[4]),
        (b"brief.bin", instants[1])}, dry.gone
    assert {g["path"] for g in dry.to_json()["gone"]} == {"log.txt", "brief.bin"}
    assert sorted(p.name for p in repo_dir.glob("packs/*/*.pack")) == packs
    wet = run_prune(repo_dir, keep)
    assert (dry.commits_dropped, dry.versions_deleted, dry.versions_moved,
            dry.chunks_deleted, dry.bytes_freed) == \
        (wet.commits_dropped, wet.versions_deleted, wet.versions_moved,
         wet.chunks_deleted, wet.bytes_freed)


PRUNE_SCRIPT = """
import sys
from anytime.store import prune
from anytime.store.options import StoreOptions
from anytime.store.repo import Repository
from anytime.store.volumes import get_volume
keep = [int(x) for x in sys.argv[2].split(",")]
with Repository.open(sys.argv[1], StoreOptions(pack_target=1 << 16, stage_records=40)) as repo:
    with repo.read_txn() as txn:
        vol = get_volume(repo, txn, "src")
    print("start", flush=True)
    prune.prune(repo, {vol.id: dict.fromkeys(keep, True)}, everything=True)
print("done", flush=True)
"""


def run_script(repo_dir, keep: list[int], kill_after: float | None = None
               ) -> tuple[bool, float]:
    """Run a prune in its own process; with ``kill_after``, SIGKILL it that many seconds
    after it starts pruning. (True if it ran to its end, seconds it pruned)."""
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-c", PRUNE_SCRIPT, str(repo_dir),
                          ",".join(map(str, keep))], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"start\n"
    t0 = time.monotonic()
    if kill_after is not None:
        time.sleep(kill_after)
        p.kill()
    out = p.stdout.read()
    p.wait()
    return b"done" in out, time.monotonic() - t0


def test_a_prune_killed_at_any_point_keeps_every_kept_instant_exact(anytime, tmp_path):
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    anytime("init", check=0)
    src.mkdir()
    for i in range(120):
        (src / f"f{i:03d}").write_bytes(os.urandom(3000))
    for c in range(10):
        for i in range(c * 7 % 120, 120, 3):
            (src / f"f{i:03d}").write_bytes(os.urandom(2000 + c))
        snap(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    keep = [instants[i] for i in (2, 6, 9)]
    pristine = tmp_path / "pristine"
    shutil.copytree(repo_dir, pristine)
    done, took = run_script(repo_dir, keep)
    assert done
    finished = picture(repo_dir)["src"]["at"]
    killed_before_end = 0
    for n in range(8):
        shutil.rmtree(repo_dir)
        shutil.copytree(pristine, repo_dir)
        if not run_script(repo_dir, keep, kill_after=took * n / 8)[0]:
            killed_before_end += 1
        # every kept instant reads exactly as before, killed or not
        now = picture(repo_dir)["src"]["at"]
        for t in keep:
            assert now[t] == before[t], f"kill {n}: kept commit {t} changed"
        r = anytime("check")
        assert r.returncode == 0, (n, r.stdout, r.stderr)
        assert run_script(repo_dir, keep)[0]  # a re-run completes
        assert picture(repo_dir)["src"]["at"] == finished
        assert b"no problems found" in anytime("check", "--read-data", check=0).stdout
    assert killed_before_end >= 3, "the kills came too late to test anything"


def test_views_at_thinned_instants_say_which_kept_instant_they_show(anytime, tmp_path):
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    instants = sorted(picture(repo_dir)["src"]["at"])
    run_prune(repo_dir, [instants[i] for i in (0, 3, 5)])
    from treeutil import at_epoch

    r = anytime("cat", src / "log.txt", "--at", at_epoch(instants[2]), check=0)
    assert r.stdout == b"version 0\n", "a thinned instant shows the kept commit before"
    assert b"was thinned by 'anytime prune'" in r.stderr and b"showing the kept" in r.stderr
    r = anytime("cat", src / "log.txt", "--at", at_epoch(instants[3]), check=0)
    assert r.stdout == b"version 3\n" * 4 and b"thinned" not in r.stderr
    log = anytime("log", src, check=0).stdout.decode()
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len(lines) == 3 and sum("(thinned:" in ln for ln in lines) == 2, log


def timed_history(tmp_path):
    """A volume with an ordinary commit A (f, g at v0), then two timed commits, as the
    shim makes them: B (f=v1 at b1, g=v1 at b2, f=v2 at b3) and C (g=v2 at c1).
    Returns (repo root, volume id, instants dict)."""
    from anytime.store import clock
    from anytime.store.format import KIND_DIR, KIND_FILE, Entry
    from anytime.store.session import WriterSession
    from anytime.store.volumes import volume_for_source

    root = tmp_path / "repo"
    Repository.init(str(root), options=TEST_OPTIONS).close()
    t: dict[str, int] = {}
    with Repository.open(str(root), TEST_OPTIONS) as repo, WriterSession(repo) as session:
        vol = volume_for_source(repo, str(tmp_path / "src"), None, clock.now_ns())
        fids = {}

        def put(b, path, data, at=None):
            fid = fids.get(path) or fids.setdefault(path, b.new_file_id())
            ref = b.store_chunk(data)
            b.put_block_version(fid, 0, ref, at=at)
            b.put_entry(path, Entry(KIND_FILE, mode=0o100644, size=len(data), file_id=fid),
                        at=at)

        b = session.builder(vol)
        b.put_entry(b"", Entry(KIND_DIR, mode=0o40755))
        put(b, b"f", b"f v0\n")
        put(b, b"g", b"g v0\n")
        t["A"] = b.commit({"kind": "scan"})
        base = t["A"] + 1_000_000
        b = session.builder(vol)
        for i, (name, path, data) in enumerate([("b1", b"f", b"f v1\n"), ("b2", b"g", b"g v1\n"),
                                                 ("b3", b"f", b"f v2\n")]):
            t[name] = base + i * 1000
            put(b, path, data, at=t[name])
        t["B"] = b.commit({"kind": "shim"})
        b = session.builder(vol)
        t["c1"] = t["B"] + 1_000_000
        put(b, b"g", b"g v2\n", at=t["c1"])
        t["C"] = b.commit({"kind": "shim"})
        vid = vol.id
    return root, vid, t


def files_at(root, vid, instant) -> dict:
    from anytime.store.volumes import get_volume_by_id

    with Repository.open(str(root), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume_by_id(repo, txn, vid)
        view = View(repo, vol, instant)
        out = {}
        for name in (b"f", b"g"):
            e = view.lookup(name)
            out[name] = None if e is None else b"".join(view.iter_read(e))
        return out


def test_a_timed_commit_kept_whole_keeps_every_instant_inside_it(tmp_path):
    root, vid, t = timed_history(tmp_path)
    probes = ["A", "b1", "b2", "b3", "B", "c1", "C"]
    before = {p: files_at(root, vid, t[p]) for p in probes}
    assert before["b2"] == {b"f": b"f v1\n", b"g": b"g v1\n"}
    with Repository.open(str(root), TEST_OPTIONS) as repo:
        prune_mod.prune(repo, {vid: {t["B"]: True, t["C"]: True}})  # A dropped
    after = {p: files_at(root, vid, t[p]) for p in probes}
    for p in ("b1", "b2", "b3", "B", "c1", "C"):
        assert after[p] == before[p], p
    assert after["A"] == {b"f": None, b"g": None}  # nothing kept before B's interior
    assert_clean(root)


def test_a_timed_commit_kept_as_a_point_is_coarsened(tmp_path):
    root, vid, t = timed_history(tmp_path)
    before = {p: files_at(root, vid, t[p]) for p in ("A", "B", "C")}
    with Repository.open(str(root), TEST_OPTIONS) as repo:
        prune_mod.prune(repo, {vid: {t["A"]: False, t["B"]: False, t["C"]: True}})
        with repo.read_txn() as txn:
            recs = dict(prune_mod.commits_of(repo, txn, vid))
    assert "timed" not in recs[t["B"]] and recs[t["B"]]["thinned_from"] == t["A"] + 1
    for p in ("A", "B", "C"):
        assert files_at(root, vid, t[p]) == before[p], p
    # inside B's interior the view is now A's (thinned), not a mix
    for p in ("b1", "b2", "b3"):
        assert files_at(root, vid, t[p]) == before["A"], p
    assert files_at(root, vid, t["c1"]) == before["C"]  # C stays whole
    assert_clean(root)


def assert_clean(root) -> None:
    from anytime.store.check import check

    with Repository.open(str(root), TEST_OPTIONS) as repo:
        rep = check(repo, read_data=True)
    assert not rep.problems, rep.problems


def set_policy(repo_dir, volume: str, **tiers) -> None:
    from anytime.store import policies
    from anytime.store.retention import Policy, parse_duration

    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, volume)
        policies.set_policy(repo, vol.id, Policy(**{k: parse_duration(v)
                                                    for k, v in tiers.items()}))


def test_the_prune_command_applies_the_volume_policy(anytime, tmp_path):
    import json
    import time

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    newest = max(before)
    time.sleep(2.2)
    set_policy(repo_dir, "src", keep_all="2s")
    dry = json.loads(anytime("prune", "--dry-run", "--json", check=0).stdout)
    assert dry["dry_run"] and dry["volumes"]["src"]["dropped"] == sorted(before)[:-1]
    assert picture(repo_dir)["src"]["at"] == before, "a dry run changed something"
    r = anytime("prune", src, check=0)
    assert b"src: 1 commit kept, 5 dropped" in r.stdout, r.stdout
    after = picture(repo_dir)["src"]
    assert [t for t, _ in after["commits"]] == [newest]
    assert after["at"][newest] == before[newest]
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout
    r = anytime("prune", check=0)  # nothing more to do
    assert b"0 commits and 0 versions removed" in r.stdout, r.stdout


def test_protect_prunes_between_its_commits_and_serves_anytime_prune(anytime, tmp_path):
    """A running protect prunes by the policy every --prune-every seconds, and runs an
    'anytime prune' for another process between two of its commits; it goes on
    capturing meanwhile and after."""
    import json
    import time

    from test_watch import Protect

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    assert len(picture(repo_dir)["src"]["commits"]) == 6
    pr = Protect(repo_dir, src, "--prune-every", "0")
    try:
        (src / "during.txt").write_text("while protect runs\n")
        deadline = time.monotonic() + 20
        while anytime("cat", src / "during.txt").returncode != 0:
            assert time.monotonic() < deadline, "protect did not commit"
            time.sleep(0.2)
        time.sleep(2.2)
        set_policy(repo_dir, "src", keep_all="2s")  # through protect's control socket
        (src / "last.txt").write_text("the newest commit\n")
        while anytime("cat", src / "last.txt").returncode != 0:
            assert time.monotonic() < deadline + 20, "protect did not commit"
            time.sleep(0.2)
        r = anytime("prune", "--json", check=0)
        rep = json.loads(r.stdout)
        assert rep["commits_dropped"] >= 7, rep
        (src / "after.txt").write_text("after the prune\n")
        while anytime("cat", src / "after.txt").returncode != 0:
            assert time.monotonic() < deadline + 40, "protect stopped committing"
            time.sleep(0.2)
    finally:
        assert pr.stop() == 0, "".join(pr.lines)
    assert anytime("cat", src / "during.txt", check=0).stdout == b"while protect runs\n"
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout


def test_protect_prunes_by_itself_every_prune_every_seconds(anytime, tmp_path):
    import time

    from test_watch import Protect

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    time.sleep(2.2)
    set_policy(repo_dir, "src", keep_all="2s")
    pr = Protect(repo_dir, src, "--prune-every", "1")
    try:
        deadline = time.monotonic() + 30
        while len(picture(repo_dir)["src"]["commits"]) > 2:
            assert time.monotonic() < deadline, "".join(pr.lines)
            time.sleep(0.5)
    finally:
        assert pr.stop() == 0, "".join(pr.lines)
    assert any("pruned:" in ln for ln in pr.lines), "".join(pr.lines)


def history_text(repo_dir) -> bytes:
    """Every history record of every pack, decoded, joined (names are in there)."""
    from anytime.store.format import HISTORY_MAGIC
    from anytime.store.history import decode_payload
    from anytime.store.packs import walk_records
    from anytime.store.packstore import LocalDirPackStore

    store = LocalDirPackStore(str(repo_dir))
    out = []
    for pack_id in store.list():
        for magic, _off, _rid, codec, raw, _slen, _ok, data in walk_records(store, pack_id,
                                                                           payload=True):
            if magic == HISTORY_MAGIC:
                out.append(decode_payload(codec, raw, data))
    return b"\n".join(out)


def test_max_age_removes_old_data_from_the_packs_and_check_proves_it(anytime, tmp_path):
    import json
    import time

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    secrets = grow_history(anytime, src)
    (src / "regulated-name.txt").write_text("personal data\n")
    snap(anytime, src)
    (src / "regulated-name.txt").unlink()
    snap(anytime, src)
    assert b"regulated-name.txt" in history_text(repo_dir)
    time.sleep(2.2)
    (src / "log.txt").write_text("today\n")
    snap(anytime, src)
    set_policy(repo_dir, "src", max_age="2s")
    rep = json.loads(anytime("prune", "--json", check=0).stdout)
    assert rep["commits_dropped"] == 8, rep
    assert len(picture(repo_dir)["src"]["commits"]) == 1, "only the newest commit stays"
    assert not in_packs(repo_dir, secrets["only"][1000:1100])
    assert b"regulated-name.txt" not in history_text(repo_dir), "a name outlived max-age"
    r = anytime("check", "--json", "--read-data")
    report = json.loads(r.stdout)
    assert report["ok"] and report["unused_records"] == 0, report
    assert anytime("cat", src / "log.txt", check=0).stdout == b"today\n"
    assert b"nothing in the packs that no kept instant uses" in anytime("check",
                                                                         check=0).stdout


def test_commits_land_while_a_prune_thins_and_its_gc_waits_for_a_gap(anytime, tmp_path,
                                                                      monkeypatch):
    """Beside a writer session, a prune's thinning runs while the session commits (it is
    held here half way, after its first transaction), and its garbage collection runs
    only when the session's owner lets it, between two commits."""
    import threading

    from anytime.store import clock
    from anytime.store.format import KIND_FILE, Entry
    from anytime.store.session import WriterSession

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    keep = {instants[i]: True for i in (0, 3, 5)}
    half_way, go_on, gc_ran = threading.Event(), threading.Event(), threading.Event()
    real_apply, real_collect = prune_mod._apply, prune_mod.collect

    def held_apply(repo, ops, stop=None):
        real_apply(repo, ops, stop)
        half_way.set()
        assert go_on.wait(30)

    def noted_collect(*a, **kw):
        gc_ran.set()
        out["gc_thread"] = threading.get_ident()
        return real_collect(*a, **kw)

    out: dict = {}
    monkeypatch.setattr(prune_mod, "_apply", held_apply)
    monkeypatch.setattr(prune_mod, "collect", noted_collect)
    with Repository.open(str(repo_dir), TEST_OPTIONS.__class__(
            pack_target=TEST_OPTIONS.pack_target, stage_records=5)) as repo, \
            WriterSession(repo) as session:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        th = threading.Thread(target=lambda: out.setdefault("rep", prune_mod.prune(
            repo, {vol.id: keep}, run_gc=session.run_between, stop=session.stopping)))
        th.start()
        assert half_way.wait(30)
        b = session.builder(vol)  # a commit while the prune is half way
        fid = b.new_file_id()
        b.put_block_version(fid, 0, b.store_chunk(b"made during the prune\n"))
        b.put_entry(b"during.txt", Entry(KIND_FILE, mode=0o100644, size=22, file_id=fid))
        during = b.commit({"kind": "test"}, instant=clock.now_ns())
        go_on.set()
        while th.is_alive():  # the owner's loop: tasks run between commits
            session.run_due()
            th.join(0.05)
        assert gc_ran.is_set() and out["rep"].commits_dropped == 3
        assert out["gc_thread"] == threading.get_ident(), "the GC ran beside a commit"
    after = picture(repo_dir)["src"]
    for t in keep:
        assert after["at"][t] == before[t]
    assert after["at"][during][b"during.txt"][-1] == \
        __import__("hashlib").sha256(b"made during the prune\n").hexdigest()
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout


def test_a_mount_at_an_instant_keeps_it_from_being_thinned_until_unmounted(anytime,
                                                                          tmp_path):
    import json
    import time

    from test_mount import mounted
    from treeutil import at_epoch

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    instants = sorted(picture(repo_dir)["src"]["at"])
    time.sleep(2.2)
    (src / "log.txt").write_text("newest\n")
    snap(anytime, src)
    set_policy(repo_dir, "src", keep_all="2s")
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(anytime, src, mp, "--at", at_epoch(instants[2])):
        with open(mp / "log.txt", "rb") as f:
            assert f.read() == b"version 2\n" * 3
            rep = json.loads(anytime("prune", "--json", check=0).stdout)
            assert rep["commits_dropped"] == 5, rep  # all but the mounted one and the newest
            f.seek(0)
            assert f.read() == b"version 2\n" * 3
        assert (mp / "sub" / "late.txt").read_text() == "from the third commit on\n"
    rep = json.loads(anytime("prune", "--json", check=0).stdout)
    assert rep["commits_dropped"] == 1, "unmounted, its instant goes"
    assert not list((repo_dir / "run").glob("pin-*")), "the dead mount's pin stays"


def set_rules(repo_dir, volume: str, base: dict, rules: list[tuple[str, dict]]) -> None:
    from anytime.store import policies
    from anytime.store.retention import PathRule, Policy, parse_duration

    def durs(d):
        return {k: parse_duration(v) for k, v in d.items()}

    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, volume)
        policies.set_policy(repo, vol.id, Policy(**durs(base), rules=tuple(
            PathRule(pattern, **durs(d)) for pattern, d in rules)))


def per_path_history(anytime, src) -> bytes:
    """Four commits of a tree with finance/, hr/ and other/, each file changed every
    time; the old hr file holds a secret. Then a pause, and a fifth commit."""
    import time

    anytime("init", check=0)
    for d in ("finance", "hr", "other"):
        (src / d).mkdir(parents=True)
    secret = os.urandom(150_000)
    for i in range(4):
        for d in ("finance", "hr", "other"):
            (src / d / "f.txt").write_text(f"{d} {i}\n")
        (src / "hr" / "old.bin").write_bytes(secret if i < 2 else b"nothing\n")
        snap(anytime, src)
    time.sleep(2.2)
    (src / "other" / "f.txt").write_text("other now\n")
    snap(anytime, src)
    return secret


def test_a_path_rule_keeps_more_of_its_paths_than_the_volume_policy(anytime, tmp_path):
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    per_path_history(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    set_rules(repo_dir, "src", {"keep_all": "2s"}, [("finance/**", {"keep_all": "1d"})])
    anytime("prune", check=0)
    after = picture(repo_dir)["src"]["at"]
    assert sorted(after) == instants, "finance keeps every commit"
    for t in instants:
        fin = {p: v for p, v in before[t].items() if p.startswith(b"finance/")}
        assert {p: v for p, v in after[t].items() if p.startswith(b"finance/")} == fin
    assert after[instants[-1]] == before[instants[-1]], "the newest commit is whole"
    old = after[instants[1]]
    assert b"other/f.txt" not in old and b"hr/f.txt" not in old, \
        "paths no rule keeps are thinned at instants only finance keeps"
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout
    shutil.rmtree(repo_dir / "index")
    anytime("check", "--repair", check=0)
    assert picture(repo_dir)["src"]["at"] == after


def test_a_path_max_age_removes_its_paths_old_data_whatever_the_volume_keeps(anytime,
                                                                              tmp_path):
    import json

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    secret = per_path_history(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    assert in_packs(repo_dir, secret[5000:5100])
    set_rules(repo_dir, "src", {"keep_all": "1d"}, [("hr/**", {"max_age": "2s"})])
    anytime("prune", check=0)
    after = picture(repo_dir)["src"]["at"]
    assert sorted(after) == instants, "the volume keeps every commit"
    for t in instants[:-1]:
        assert not any(p.startswith(b"hr/") for p in after[t]), "hr data outlived max-age"
        assert {p: v for p, v in after[t].items() if not p.startswith(b"hr")} == \
            {p: v for p, v in before[t].items() if not p.startswith(b"hr")}
    assert after[instants[-1]] == before[instants[-1]]
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        assert View(repo, vol, instants[0]).lookup(b"") is not None, "the root went too"
    assert not in_packs(repo_dir, secret[5000:5100]), "hr content stays in the packs"
    report = json.loads(anytime("check", "--json", "--read-data").stdout)
    assert report["ok"] and report["unused_records"] == 0, report


def test_a_capacity_cap_thins_oldest_detail_first_never_a_hold(anytime, tmp_path):
    import json

    from anytime.store import policies
    from anytime.store.retention import Hold, Policy, parse_duration

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    anytime("init", check=0)
    src.mkdir()
    for i in range(6):
        (src / f"data{i}.bin").write_bytes(os.urandom(400_000))
        if i:
            (src / f"data{i - 1}.bin").unlink()  # each commit's data lives in it alone
        snap(anytime, src)
    before = picture(repo_dir)["src"]["at"]
    instants = sorted(before)
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        used = repo.space_used()
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        policies.add_hold(repo, vol.id, Hold(id="keep1", from_ns=instants[0],
                                             to_ns=instants[0]))
        cap = used - 1_000_000  # about two or three commits' data too much
        policies.set_policy(repo, vol.id, Policy(keep_all=parse_duration("1d"),
                                                 max_size=cap))
    rep = json.loads(anytime("prune", "--json", check=0).stdout)
    capped = rep["volumes"]["src"]["capped"]
    assert capped and capped == instants[1:1 + len(capped)], "not the oldest first"
    after = picture(repo_dir)["src"]["at"]
    assert instants[0] in after and after[instants[0]] == before[instants[0]], "a hold went"
    assert instants[-1] in after and after[instants[-1]] == before[instants[-1]]
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        assert repo.space_kept() <= cap
    status = anytime("status", check=0).stdout.decode()
    assert "the capacity cap (--max-size) thinned beyond the policy" in status, status
    assert f"dropped {len(capped)} commit" in status


def test_policy_hold_and_label_commands_decide_what_prune_keeps(anytime, tmp_path):
    """The commands as people type them: a policy, a label, a hold on another instant;
    prune keeps the held and labelled commits and the newest, drops the rest, and once
    the hold is released and labels are no longer kept, the next prune drops those."""
    import json
    import time

    from treeutil import at_epoch

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    instants = sorted(picture(repo_dir)["src"]["at"])
    anytime("mark", src, "release-1", "--at", at_epoch(instants[1]), check=0)
    hold = anytime("hold", src, "--from", at_epoch(instants[3]), "--to",
                   at_epoch(instants[3]), check=0).stdout.decode()
    time.sleep(2.2)
    anytime("policy", src, "--keep-all", "2s", check=0)
    rep = json.loads(anytime("prune", "--json", check=0).stdout)
    kept = [t for t, _ in picture(repo_dir)["src"]["commits"]]
    assert kept == [instants[1], instants[3], instants[5]], (kept, rep)
    hold_id = next(w for w in hold.split() if w.startswith("h") and len(w) == 7)
    anytime("release", src, hold_id, check=0)
    anytime("policy", src, "--keep-labels", "no", check=0)
    anytime("prune", check=0)
    assert [t for t, _ in picture(repo_dir)["src"]["commits"]] == [instants[5]]
    r = anytime("cat", src / "log.txt", "--at", "release-1", check=14)
    assert b"thinned by 'anytime prune'" in r.stderr, "a label whose commit went says so"


def test_a_reader_whose_chunk_moved_under_it_reads_the_new_copy(anytime, tmp_path):
    """A reader (another process's view: here a second Repository) that looked a chunk
    up before a prune rewrote its pack reads the copy the index names now, and records
    no damage."""
    from anytime.store.format import ref_chunk_ids, split_blockver_key

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    anytime("init", check=0)
    src.mkdir()
    keep = os.urandom(300_000)
    (src / "keep.bin").write_bytes(keep)
    (src / "gone.bin").write_bytes(os.urandom(900_000))  # the same pack, garbage later
    one_pack = {"ANYTIME_PACK_TARGET": str(64 << 20)}
    anytime("snapshot", src, env=one_pack, check=0)
    (src / "gone.bin").unlink()
    anytime("snapshot", src, env=one_pack, check=0)
    instants = sorted(picture(repo_dir)["src"]["at"])
    reader = Repository.open(str(repo_dir), TEST_OPTIONS)
    try:
        txn_cm = reader.read_txn()
        txn = txn_cm.__enter__()  # a read begun before the prune
        with reader.read_txn() as t2:
            vol = get_volume(reader, t2, "src")
            e = View(reader, vol, instants[1]).lookup(b"keep.bin")
        refs = [bytes(v) for k, v in txn.cursor(db=reader.dbs[b"blockvers"])
                if split_blockver_key(bytes(k))[1] == e.file_id]
        cids = {c for r in refs for c in ref_chunk_ids(r)}
        assert e is not None and cids
        before = {c: reader.block_location(txn, c) for c in cids}
        rep = prune_mod.prune(reader, {vol.id: {instants[1]: True}})  # one env a process
        assert rep.packs_rewritten >= 1
        got = {reader.read_block(txn, c) for c in cids}
        assert b"".join(sorted(got, key=keep.find)) == keep, "not the file's chunks"
        with reader.read_txn() as t3:
            assert any(reader.block_location(t3, c) != before[c] for c in cids), \
                "the prune moved nothing: this tests nothing"
        txn_cm.__exit__(None, None, None)
    finally:
        reader.close()
    assert not (repo_dir / "damaged").exists(), "a moved chunk was taken for damage"


def test_the_mount_shows_a_thinned_instant_as_a_link_to_the_kept_one(anytime, tmp_path):
    from test_mount import mounted
    from treeutil import at_epoch

    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    grow_history(anytime, src)
    instants = sorted(picture(repo_dir)["src"]["at"])
    run_prune(repo_dir, [instants[i] for i in (0, 3, 5)])
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(anytime, src, mp):
        listed = sorted(os.listdir(mp))
        thinned = mp / at_epoch(instants[2])
        target = os.readlink(thinned)  # names the kept instant it shows
        assert target in listed and (mp / target).is_dir()
        assert (thinned / "log.txt").read_bytes() == b"version 0\n", "not the kept state"
        kept = mp / at_epoch(instants[3])
        assert kept.is_dir() and not kept.is_symlink(), "a kept instant is no link"
        assert (kept / "log.txt").read_bytes() == b"version 3\n" * 4
        assert sum(1 for n in listed if n[:1].isdigit()) == 3, listed


def test_a_collection_killed_after_its_deletes_rewrites_its_packs_next_time(anytime, tmp_path,
                                                                          monkeypatch):
    """The garbage chunks' records go before their packs are rewritten: a prune killed
    in between must not leave their bytes in the packs for good (the index no longer
    shows them as garbage); the packs it meant to rewrite are in meta."""
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    secrets = grow_history(anytime, src)
    instants = sorted(picture(repo_dir)["src"]["at"])

    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_mod, "_rewrite", killed)
    try:
        run_prune(repo_dir, [instants[i] for i in (0, 3, 5)])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the rewrite did not run")
    monkeypatch.undo()
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo, repo.read_txn() as txn:
        from anytime.store.format import DB_META

        assert txn.get(prune_mod.GC_KEY, db=repo.dbs[DB_META]), "no record of the rewrite"
    assert in_packs(repo_dir, secrets["only"][1000:1100])
    rep = run_prune(repo_dir, [instants[i] for i in (0, 3, 5)])
    assert rep.chunks_deleted == 0 and rep.packs_rewritten >= 1, rep
    assert not in_packs(repo_dir, secrets["only"][1000:1100]), "its bytes stayed in a pack"
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo, repo.read_txn() as txn:
        assert txn.get(prune_mod.GC_KEY, db=repo.dbs[DB_META]) is None
    assert_clean(repo_dir)


def test_garbage_left_below_the_rewrite_ratio_is_counted_by_later_prunes(tmp_path):
    """A pack a prune leaves with less than REWRITE_RATIO garbage is rewritten once later
    prunes bring its garbage there, though the index no longer shows the first part."""
    from anytime.store import clock
    from anytime.store.format import KIND_DIR, KIND_FILE, Entry
    from anytime.store.options import StoreOptions
    from anytime.store.volumes import create_volume
    from anytime.store.writer import CommitBuilder

    root = tmp_path / "repo"
    opts = StoreOptions(pack_target=1 << 22)
    contents = [os.urandom(30_000) for _ in range(10)]  # incompressible, one pack
    step = 60 * 10**9
    base = clock.now_ns() - 10 * step
    with Repository.init(str(root), options=opts) as repo, repo.writer_lock():
        with repo.write_txn() as txn:
            vol = create_volume(repo, txn, "src", str(tmp_path), repo.block_size, base)
        fids = []

        def commit(c: int, changed: range) -> int:
            t = base + (c + 1) * step
            b = CommitBuilder(repo, vol)
            if not fids:
                b.put_entry(b"", Entry(KIND_DIR, mode=0o40755, nlink=2, atime_ns=t,
                                       mtime_ns=t, ctime_ns=t))
                fids.extend(b.new_file_id() for _ in contents)
            for i in changed:
                data = contents[i] if c == 0 else os.urandom(30_000)
                b.put_block_version(fids[i], 0, b.store_chunk(data))
                b.put_entry(b"f%d" % i, Entry(KIND_FILE, mode=0o100644, size=len(data),
                                              atime_ns=t, mtime_ns=t, ctime_ns=t,
                                              file_id=fids[i]))
            b.commit({"kind": "test"}, instant=t)
            return t

        t0 = commit(0, range(10))
        first_packs = set(repo.pack_store.list())
        t1 = commit(1, range(0, 1))  # the first pack: 10% garbage once t0 goes
        rep = prune_mod.prune(repo, {vol.id: {t1: True}})
        assert rep.chunks_deleted == 1 and rep.packs_rewritten == 0, rep
        assert first_packs <= set(repo.pack_store.list())
        for c in (2, 3):  # 10% more each time; no prune alone reaches REWRITE_RATIO
            t = commit(c, range(c - 1, c))
            rep = prune_mod.prune(repo, {vol.id: {t: True}})
            assert rep.chunks_deleted == 1, rep
        assert not first_packs & set(repo.pack_store.list()), "the first pack stayed"
        with repo.read_txn() as txn:
            from anytime.store.format import DB_META

            cur = txn.cursor(db=repo.dbs[DB_META])
            left = [bytes(k) for k, _ in cur if bytes(k).startswith(prune_mod.GC_DEAD_PREFIX)]
        assert all(k[len(prune_mod.GC_DEAD_PREFIX):] in set(repo.pack_store.list())
                   for k in left), left
        assert t0 < t1
    assert_clean(root)
