"""Model-based test of capture + timeline + view (hypothesis stateful testing).

A real directory tree is changed by random file operations; the one clock is driven by
a fake that advances by random gaps; ``snapshot`` captures the tree. A plain model keeps
what the tree held at each commit instant. Views at random instants (exactly at a
commit, between commits, before the first, after the last) must match the model: names
listed, kinds, file contents, symlink targets, and shared file ids for hardlinks.

Real file mtimes still come from the kernel; only commit instants use the fake clock.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile

from conftest import TEST_OPTIONS
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from anytime.capture import snapshot
from anytime.store import clock
from anytime.store.format import KIND_DIR, KIND_FILE, KIND_SYMLINK
from anytime.store.repo import Repository
from anytime.store.volumes import list_volumes
from anytime.vfs.view import View

BLOCK = 4096  # small blocks so small files span several
NAMES = [b"a", b"ab", b"b c", b"\xff\xfe", b"-x", b"d"]
START = 1_800_000_000 * 10**9

contents = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda c, n: bytes([c]) * n, st.integers(0, 255), st.integers(0, 3 * BLOCK + 7)),
    st.builds(lambda a, n, b: a + bytes(n) + b, st.binary(max_size=50),
              st.integers(BLOCK, 3 * BLOCK), st.binary(min_size=1, max_size=50)),
)


class File:
    """A model inode: hardlinked paths share one."""

    def __init__(self, data: bytes = b""):
        self.data = bytearray(data)


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


class TreeMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="anytime-model-")
        self.root = os.path.join(self.tmp, "tree").encode()
        os.mkdir(self.root)
        self.repo = Repository.init(os.path.join(self.tmp, "repo"), block_size=BLOCK,
                                    options=TEST_OPTIONS)
        self.now = START
        clock.set_clock(lambda: self.now)
        # the tree now: path -> File | ("dir",) | ("symlink", target); b"" is the root
        self.tree: dict[bytes, object] = {b"": ("dir",)}
        self.instants: list[int] = []
        self.states: list[dict] = []  # per commit: path -> ("file", data, inode) | ...

    def teardown(self):
        clock.set_clock(None)
        self.repo.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers ---------------------------------------------------------------------
    def real(self, path: bytes) -> bytes:
        return join(self.root, path) if path else self.root

    def dirs(self) -> list[bytes]:
        return sorted(p for p, v in self.tree.items() if v == ("dir",))

    def files(self) -> list[bytes]:
        return sorted(p for p, v in self.tree.items() if isinstance(v, File))

    def nondirs(self) -> list[bytes]:
        return sorted(p for p, v in self.tree.items() if v != ("dir",))

    def free_path(self, data, max_depth=3) -> bytes | None:
        parent = data.draw(st.sampled_from(self.dirs()))
        if parent.count(b"/") + 1 >= max_depth and parent:
            return None
        path = join(parent, data.draw(st.sampled_from(NAMES)))
        return None if path in self.tree else path

    def remove_subtree(self, path: bytes) -> None:
        for p in [p for p in self.tree if p == path or p.startswith(path + b"/")]:
            del self.tree[p]

    # --- file operations -------------------------------------------------------------
    @initialize(data=st.data(), n=st.integers(0, 8))
    def populate(self, data, n):
        """Start from a small random tree, so every example has something to change."""
        for _ in range(n):
            op = data.draw(st.sampled_from(["file", "file", "dir", "symlink"]))
            if op == "dir":
                self.mkdir(data)
            elif op == "symlink":
                self.symlink(data, b"a")
            else:
                self.create_or_overwrite(data, data.draw(contents))
        self.snapshot(0)

    @rule(data=st.data(), content=contents)
    def create_or_overwrite(self, data, content):
        choices = self.files()
        if choices and data.draw(st.booleans()):
            path = data.draw(st.sampled_from(choices))
        else:
            path = self.free_path(data)
            if path is None:
                return
        with open(self.real(path), "wb") as f:  # O_TRUNC: hardlinks see it too
            f.write(content)
        node = self.tree.get(path)
        if isinstance(node, File):
            node.data[:] = content
        else:
            self.tree[path] = File(content)

    @precondition(lambda self: self.files())
    @rule(data=st.data(), content=contents)
    def append(self, data, content):
        path = data.draw(st.sampled_from(self.files()))
        with open(self.real(path), "ab") as f:
            f.write(content)
        self.tree[path].data += content

    @precondition(lambda self: self.files())
    @rule(data=st.data(), size=st.integers(0, 4 * BLOCK))
    def truncate(self, data, size):
        path = data.draw(st.sampled_from(self.files()))
        os.truncate(self.real(path), size)
        node = self.tree[path]
        if size < len(node.data):
            del node.data[size:]
        else:
            node.data += bytes(size - len(node.data))

    @precondition(lambda self: len(self.tree) > 1)
    @rule(data=st.data())
    def delete(self, data):
        path = data.draw(st.sampled_from(sorted(p for p in self.tree if p)))
        if self.tree[path] == ("dir",):
            shutil.rmtree(self.real(path))
            self.remove_subtree(path)
        else:
            os.unlink(self.real(path))
            del self.tree[path]

    @rule(data=st.data())
    def mkdir(self, data):
        path = self.free_path(data)
        if path is not None:
            os.mkdir(self.real(path))
            self.tree[path] = ("dir",)

    @precondition(lambda self: len(self.dirs()) > 1)
    @rule(data=st.data())
    def rmdir_if_empty(self, data):
        path = data.draw(st.sampled_from([d for d in self.dirs() if d]))
        if any(p.startswith(path + b"/") for p in self.tree):
            return
        os.rmdir(self.real(path))
        del self.tree[path]

    @precondition(lambda self: len(self.tree) > 1)
    @rule(data=st.data())
    def rename(self, data):
        src = data.draw(st.sampled_from(sorted(p for p in self.tree if p)))
        if self.tree[src] != ("dir",) and self.files() and data.draw(st.booleans()):
            dst = data.draw(st.sampled_from(self.files()))  # replace an existing file
            if self.tree[dst] is self.tree[src]:
                return  # rename onto a hardlink of itself is a no-op in POSIX
        else:
            dst = self.free_path(data)
        if dst is None or dst == src or dst.startswith(src + b"/"):
            return
        os.rename(self.real(src), self.real(dst))
        moved = {p: v for p, v in self.tree.items() if p == src or p.startswith(src + b"/")}
        self.remove_subtree(src)
        for p, v in moved.items():
            self.tree[dst + p[len(src):]] = v

    @rule(data=st.data(), link=st.sampled_from([b"a", b"../x", b"\xff/\n", b"/etc", b"d/ab"]))
    def symlink(self, data, link):
        path = self.free_path(data)
        if path is not None:
            os.symlink(link, self.real(path))
            self.tree[path] = ("symlink", link)

    @precondition(lambda self: self.files())
    @rule(data=st.data())
    def hardlink(self, data):
        src = data.draw(st.sampled_from(self.files()))
        dst = self.free_path(data)
        if dst is not None:
            os.link(self.real(src), self.real(dst))
            self.tree[dst] = self.tree[src]


    # --- capture ---------------------------------------------------------------------
    def frozen(self) -> dict:
        out = {}
        for p, v in self.tree.items():
            out[p] = ("file", bytes(v.data), id(v)) if isinstance(v, File) else v
        return out

    @rule(gap=st.integers(0, 10**12))
    def snapshot(self, gap):
        """Time passes by a random gap (possibly none), then the tree is captured."""
        self.now += gap
        report = snapshot(self.repo, os.fsdecode(self.root), name="model")
        assert report.committed and not report.partial, report.skipped
        assert not self.instants or report.instant > self.instants[-1]
        self.instants.append(report.instant)
        self.states.append(self.frozen())
        self.check_view(report.instant, self.states[-1])

    @rule(gap=st.integers(1, 1000))
    def snapshot_soon(self, gap):
        """Commits a few nanoseconds apart (a second rule: snapshots come often)."""
        self.snapshot(gap)

    # --- checks ----------------------------------------------------------------------
    def expected_at(self, t: int) -> dict | None:
        i = bisect.bisect_right(self.instants, t)
        return self.states[i - 1] if i else None

    def check_view(self, t: int, state: dict | None) -> None:
        with self.repo.read_txn() as txn:
            vol = next(v for v in list_volumes(self.repo, txn) if v.name == "model")
        view = View(self.repo, vol, t)
        if state is None:
            assert view.lookup(b"") is None
            assert view.listdir(b"") == []
            return
        file_ids: dict[int, int] = {}
        for path, node in state.items():
            e = view.lookup(path)
            assert e is not None, (t, path)
            if node == ("dir",):
                assert e.kind == KIND_DIR, (t, path)
                listed = [n for n, _ in view.listdir(path)]
                want = sorted(p.rpartition(b"/")[2] for p in state
                              if p and p.rpartition(b"/")[0] == path)
                assert listed == want, (t, path)
            elif node[0] == "symlink":
                assert e.kind == KIND_SYMLINK and e.target == node[1], (t, path)
            else:
                assert e.kind == KIND_FILE, (t, path)
                assert e.size == len(node[1]), (t, path)
                assert b"".join(view.iter_read(e)) == node[1], (t, path)
                # hardlinked paths share a file id; distinct files do not
                assert file_ids.setdefault(node[2], e.file_id) == e.file_id, (t, path)
        assert len(set(file_ids.values())) == len(file_ids), t
        for name in NAMES:  # a name absent from the model is absent from the view
            if name not in state:
                assert view.lookup(name) is None, (t, name)

    @precondition(lambda self: self.instants)
    @rule(data=st.data())
    def check_random_instant(self, data):
        i = data.draw(st.integers(0, len(self.instants) - 1))
        t = self.instants[i]
        nxt = self.instants[i + 1] if i + 1 < len(self.instants) else t + 10**15
        where = data.draw(st.sampled_from(["at", "between", "before-first", "just-before"]))
        if where == "between" and nxt - t > 1:
            t = data.draw(st.integers(t + 1, nxt - 1))
        elif where == "before-first":
            t = data.draw(st.integers(0, self.instants[0] - 1))
        elif where == "just-before":
            t -= 1
        self.check_view(t, self.expected_at(t))

    @invariant()
    def past_views_never_change(self):
        # cheap form of "a view of a committed instant never changes": the first and
        # last commits still read as they did
        if self.instants:
            self.check_view(self.instants[0], self.states[0])
            self.check_view(self.instants[-1], self.states[-1])


def test_timeline_matches_model():
    run_state_machine_as_test(TreeMachine, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
