"""Who may read what through a mount: POSIX ACLs, the directories of a version's instant,
and how a mount ends (real users and groups, real ACLs, real mounts, real signals).

Users and groups are created for each test (``useradd``/``groupadd``, names unique per
run) and removed at teardown; reads are made as them with ``setpriv``. The original tree
is the oracle: every user's answer through every view of the mount must be the answer the
original tree gave at that instant.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import anytime_command
from test_mount import mnt_dirs, mounted  # noqa: F401 - mnt_dirs is a fixture
from treeutil import at_epoch, snap

from anytime.vfs.instants import format_instant

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                       reason="real-mount tests need /dev/fuse and fusermount3"),
]
needs_users = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in
                                 ("useradd", "groupadd", "setpriv", "setfacl")),
    reason="needs root, useradd/groupadd, setpriv and setfacl (acl) to act as other users")

_run_ids = itertools.count()


@pytest.fixture
def people():
    """Groups ``g1`` (owning group), ``g2`` (a named group) and users: ``u1`` (in g1),
    ``u2`` (named in ACLs), ``u3`` (in g2 through a supplementary group only), ``u4``
    (named, but masked out), ``u5`` (nobody in particular). Values: (uid, gid, groups)
    and the ``setpriv`` prefix as ``prefix[name]``."""
    tag = f"at{os.getpid() % 100000}x{next(_run_ids)}"
    groups, users = [], []

    def group(name):
        subprocess.run(["groupadd", f"{tag}{name}"], check=True)
        groups.append(f"{tag}{name}")
        return int(subprocess.run(["getent", "group", f"{tag}{name}"], check=True,
                                  capture_output=True, text=True).stdout.split(":")[2])

    def user(name, primary, extra=()):
        cmd = ["useradd", "-M", "-N", "-s", "/bin/sh", "-g", str(primary)]
        if extra:
            cmd += ["-G", ",".join(map(str, extra))]
        subprocess.run(cmd + [f"{tag}{name}"], check=True)
        users.append(f"{tag}{name}")
        uid = int(subprocess.run(["id", "-u", f"{tag}{name}"], check=True,
                                 capture_output=True, text=True).stdout)
        return uid, primary, frozenset(extra)

    try:
        g1, g2, g0 = group("g1"), group("g2"), group("g0")
        out = {"g1": g1, "g2": g2,
               "u1": user("u1", g1), "u2": user("u2", g0), "u3": user("u3", g0, [g2]),
               "u4": user("u4", g0), "u5": user("u5", g0)}
        yield out
    finally:
        for u in users:
            subprocess.run(["userdel", u], capture_output=True)
        for g in groups:
            subprocess.run(["groupdel", g], capture_output=True)


def as_user(who) -> list[str]:
    uid, gid, groups = who
    grp = f"--groups={','.join(map(str, sorted(groups)))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", grp, "--"]


@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's tmp_path is 0700): the tree whose
    permissions the test compares must be reachable by the test's users."""
    base = Path(tempfile.mkdtemp(prefix="anytime-acl-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


#: The paths of the matrix; directories are listed (r), files read; d/inner and pd/g also
#: need search on their directory.
PATHS = ["f", "gacl", "masked", "plain", "d", "d/inner", "pd", "pd/g", "defacl"]


def setfacl(*args):
    subprocess.run(["setfacl", *map(str, args)], check=True)


def build(src: Path, p) -> None:
    """The tree at the first instant: the issue's file, a named group, a mask that
    refuses a named user, plain mode bits, a directory searchable through its ACL, a 0700
    directory, a default ACL."""
    for name in ("f", "gacl", "masked", "plain"):
        (src / name).write_text(f"{name} content\n")
        os.chown(src / name, 0, p["g1"])
        os.chmod(src / name, 0o640)
    setfacl("-m", f"g::---,u:{p['u2'][0]}:r,m::r,o::---", src / "f")
    setfacl("-m", f"g:{p['g2']}:r,o::---", src / "gacl")
    setfacl("-m", f"u:{p['u4'][0]}:r,m::---", src / "masked")
    (src / "d").mkdir()
    (src / "d" / "inner").write_text("inner\n")
    os.chmod(src / "d" / "inner", 0o644)
    os.chown(src / "d", 0, p["g1"])
    os.chmod(src / "d", 0o750)
    setfacl("-m", f"u:{p['u2'][0]}:rx,g::---,m::rx", src / "d")
    (src / "pd").mkdir()
    (src / "pd" / "g").write_text("old g\n")
    os.chmod(src / "pd" / "g", 0o644)
    os.chmod(src / "pd", 0o700)
    (src / "defacl").mkdir()
    os.chmod(src / "defacl", 0o755)
    setfacl("-d", "-m", f"u:{p['u2'][0]}:r", src / "defacl")


def change(src: Path, p) -> None:
    """The second instant: pd/ opened to all, u2 taken off f's ACL, new content."""
    os.chmod(src / "pd", 0o755)
    (src / "pd" / "g").write_text("new g\n")
    setfacl("-x", f"u:{p['u2'][0]}", src / "f")
    (src / "f").write_text("f changed\n")


_PROBE = ('for p in "$@"; do if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1; '
          'else cat "$p" >/dev/null 2>&1; fi; r=$?; test -r "$p"; echo "$r $?"; done')


def answers(root: Path, who, paths=PATHS) -> dict[str, tuple[bool, bool]]:
    """For each path under ``root``: (could read or list it, access(R_OK) said yes), as
    user ``who``."""
    r = subprocess.run(as_user(who) + ["sh", "-c", _PROBE, "sh",
                                       *(str(root / q) for q in paths)],
                       capture_output=True, text=True, check=True)
    rows = r.stdout.split("\n")[:len(paths)]
    return {q: tuple(x == "0" for x in row.split()) for q, row in zip(paths, rows, strict=True)}


def matrix(root: Path, p) -> dict[str, dict]:
    return {u: answers(root, p[u]) for u in ("u1", "u2", "u3", "u4", "u5")}


@pytest.fixture
def acl_history(anytime, open_dir, people):
    """Two instants of an ACL'd tree, and what each user could read at each (measured on
    the original tree right after each capture)."""
    anytime("init", check=0)
    src = open_dir / "src"
    src.mkdir()
    os.chmod(src, 0o755)
    build(src, people)
    t1 = snap(anytime, src, "--label", "one")["instant_ns"]
    m1 = matrix(src, people)
    time.sleep(1.1)
    change(src, people)
    t2 = snap(anytime, src)["instant_ns"]
    m2 = matrix(src, people)
    return src, people, (t1, m1), (t2, m2)


@needs_users
def test_acls_in_fixed_mounts(anytime, acl_history, mnt_dirs):  # noqa: F811
    """--at mounts grant exactly what the original tree granted at that instant."""
    src, p, (t1, m1), (t2, m2) = acl_history
    # the case, as measured on the original tree
    assert m1["u1"]["f"] == (False, False) and m1["u2"]["f"] == (True, True)
    assert m1["u3"]["gacl"][0] and not m1["u4"]["masked"][0] and m1["u1"]["plain"][0]
    assert m1["u2"]["d/inner"][0] and not m1["u1"]["d/inner"][0]
    assert not m1["u5"]["pd/g"][0] and m2["u5"]["pd/g"][0] and not m2["u2"]["f"][0]
    for t, m in ((t1, m1), (t2, m2)):
        with mounted(anytime, "src", mnt_dirs(), "--at", at_epoch(t)) as mp:
            assert matrix(mp, p) == m, format_instant(t)
            # default ACLs are shown (getfacl reads both), not applied to reading
            out = subprocess.run(["getfacl", "-n", "-p", str(mp / "defacl")],
                                 capture_output=True, text=True, check=True).stdout
            assert f"default:user:{p['u2'][0]}:r--" in out


@needs_users
def test_acls_in_time_travel_views(anytime, acl_history, mnt_dirs):  # noqa: F811
    """latest/, a typed instant and labels/ each grant what their instant granted."""
    src, p, (t1, m1), (t2, m2) = acl_history
    with mounted(anytime, "src", mnt_dirs()) as mp:
        assert matrix(mp / "latest", p) == m2
        assert matrix(mp / format_instant(t1, utc=True), p) == m1
        assert matrix(mp / at_epoch(t2), p) == m2
        assert matrix(mp / "labels" / "one", p) == m1


@needs_users
def test_versions_keep_the_permissions_of_their_instant(anytime, acl_history, mnt_dirs):  # noqa: F811
    """versions/PATH/INSTANT is readable exactly by whom the tree at INSTANT let read PATH:
    pd/g of the time pd/ was 0700 stays closed to others after pd/ became 0755, and f's
    old version stays open to u2, whom its ACL named then."""
    src, p, (t1, m1), (t2, m2) = acl_history
    files = [q for q in PATHS if (src / q).is_file()]
    with mounted(anytime, "src", mnt_dirs()) as mp:
        for q in files:
            names = sorted(os.listdir(mp / "versions" / q))  # as root: every version
            assert names[0] == format_instant(t1, utc=True)
            for name in names:
                m = m1 if name == format_instant(t1, utc=True) else m2
                for u in m:
                    got = answers(mp / "versions" / q, p[u], [name])[name]
                    assert got == m[u][q], (q, name, u)
        # a user lists only the versions they could reach at their instants
        listed = subprocess.run(as_user(p["u5"]) + ["ls", str(mp / "versions" / "pd" / "g")],
                                capture_output=True, text=True, check=True).stdout.split()
        assert listed == [format_instant(t2, utc=True)]
        assert m1["u2"]["f"] == (True, True)
        r = subprocess.run(as_user(p["u5"]) + ["stat", str(mp / "versions" / "pd" / "g" /
                                                           format_instant(t1, utc=True))],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr


@needs_users
def test_namespace_check_agrees_with_the_original_tree(anytime, acl_history, repo_dir):
    """The vfs check (what a web page will use, no kernel involved) gives the original
    tree's answers, for every user, path and instant."""
    from anytime.store.repo import Repository
    from anytime.store.volumes import get_volume
    from anytime.vfs.access import Caller, R, W
    from anytime.vfs.namespace import Namespace

    src, p, (t1, m1), (t2, m2) = acl_history
    with Repository.open(str(repo_dir)) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        ns = Namespace(repo, vol)
        for t, m in ((t1, m1), (t2, m2)):
            for u, row in m.items():
                caller = Caller(*p[u])
                for q in PATHS:
                    node = ns.resolve(f"/{at_epoch(t)}/{q}".encode())
                    assert ns.may(node, caller, R) == row[q][0], (format_instant(t), u, q)
                    assert not ns.may(node, caller, W)
        root = Caller(0, 0)
        assert all(ns.may(ns.resolve(f"/latest/{q}".encode()), root, R) for q in PATHS)


def _popen_mount(repo_dir, *args) -> subprocess.Popen:
    env = dict(os.environ, ANYTIME_REPO=str(repo_dir))
    return subprocess.Popen([anytime_command(), "mount", "-f", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_mounted(mp: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not os.path.ismount(mp):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the mount did not come up"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_mount_ends_cleanly_on_a_signal(anytime, src_dir, repo_dir, mnt_dirs,  # noqa: F811
                                                   sig):
    """Ctrl-C (or SIGTERM) on 'mount -f' unmounts and exits 0, without a traceback."""
    anytime("init", check=0)
    (src_dir / "a").write_text("a\n")
    snap(anytime, src_dir)
    mp = mnt_dirs()
    proc = _popen_mount(repo_dir, "src", mp)
    try:
        _wait_mounted(mp, proc)
        assert (mp / "latest" / "a").read_text() == "a\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"RuntimeError" not in err, err
    assert not os.path.ismount(mp)


def test_second_signal_stops_with_files_open(anytime, src_dir, repo_dir, mnt_dirs):  # noqa: F811
    """With a file open the first Ctrl-C detaches (the open file keeps reading); a second
    one stops the process at once."""
    anytime("init", check=0)
    (src_dir / "a").write_text("a\n")
    snap(anytime, src_dir)
    mp = mnt_dirs()
    proc = _popen_mount(repo_dir, "src", mp)
    f = None
    try:
        _wait_mounted(mp, proc)
        f = open(mp / "latest" / "a", "rb")
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while os.path.ismount(mp) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.ismount(mp)
        assert f.read() == b"a\n"
        assert proc.poll() is None  # still serving the open file
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if f is not None:
            with contextlib.suppress(OSError):  # its mount is gone: ENOTCONN
                f.close()
    assert proc.returncode == 128 + signal.SIGINT and b"Traceback" not in err, err


def test_volume_without_a_commit(anytime, repo_dir, src_dir, mnt_dirs):  # noqa: F811
    """A volume whose first capture never committed: the time-travel root works and is
    empty (labels/ and versions/, no latest/) until the first commit shows in latest/;
    '--at' refuses with exit 14 and says to snapshot first."""
    from anytime.store.repo import Repository
    from anytime.store.volumes import create_volume

    anytime("init", check=0)
    with Repository.open(str(repo_dir)) as repo:  # what a first snapshot stopped early leaves
        with repo.env.begin(write=True) as txn:
            create_volume(repo, txn, "src", str(src_dir), repo.block_size, 1)
    r = anytime("mount", "src", mnt_dirs(), "--at", "now", check=14)
    assert b"no commits yet" in r.stderr and b"anytime snapshot" in r.stderr
    with mounted(anytime, "src", mnt_dirs()) as mp:
        assert sorted(os.listdir(mp)) == ["labels", "versions"]
        assert os.listdir(mp / "versions") == [] and os.listdir(mp / "labels") == []
        assert not (mp / "latest").exists()
        (src_dir / "a").write_text("first\n")
        snap(anytime, src_dir)
        deadline = time.monotonic() + 10
        while not (mp / "latest" / "a").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (mp / "latest" / "a").read_text() == "first\n"
        assert os.listdir(mp / "versions") == ["a"]
