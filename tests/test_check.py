"""``anytime check``: a clean repository passes; a flipped byte is found and named."""

from __future__ import annotations

import os


def test_check_clean_then_damaged(anytime, repo_dir, src_dir):
    anytime("init", check=0)
    (src_dir / "a.bin").write_bytes(os.urandom(200_000))
    (src_dir / "b.txt").write_text("hello\n" * 1000)
    anytime("snapshot", src_dir, check=0)
    r = anytime("check", "--read-data", check=0)
    assert b"no problems found" in r.stdout
    pack = max(repo_dir.glob("packs/*/*.pack"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x55
    pack.write_bytes(bytes(data))
    r = anytime("check")
    assert r.returncode == 16 and b"fails its checksum" in r.stderr
    assert pack.stem.encode() in r.stderr


def test_check_counts_leftover_packs(anytime, repo_dir, src_dir):
    anytime("init", check=0)
    (src_dir / "a").write_text("x")
    anytime("snapshot", src_dir, check=0)
    stray = repo_dir / "packs" / "ab" / ("ab" * 16 + ".pack")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"ANYTPACK" + bytes(24))
    r = anytime("check", check=0)
    assert b"1 uncommitted pack file (" in r.stdout
    anytime("snapshot", src_dir, check=0)
    assert not stray.exists(), "the next writer reclaims packs no commit references"


def test_a_second_writer_is_refused_while_one_runs(anytime, repo_dir, src_dir):
    """Two snapshots at once: the second exits 11 with a plain message; readers go on.
    Labels are written under the writer lock too."""
    import fcntl

    anytime("init", check=0)
    (src_dir / "a").write_text("x")
    anytime("snapshot", src_dir, check=0)
    with open(repo_dir / "lock", "r+") as f:  # hold the writer lock as a snapshot would
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("pid 4242")
        f.flush()
        r = anytime("snapshot", src_dir)
        assert r.returncode == 11 and b"pid 4242" in r.stderr
        assert anytime("cat", src_dir / "a", check=0).stdout == b"x", "readers never wait"
        r = anytime("mark", src_dir, "during")
        assert r.returncode == 11 and b"pid 4242" in r.stderr, r.stderr
        anytime("unmark", src_dir, "during", check=11)
    anytime("snapshot", src_dir, check=0)
    anytime("mark", src_dir, "during", check=0)
    anytime("unmark", src_dir, "during", check=0)  # it was written: unmark finds it


def test_check_shows_progress_on_a_terminal(anytime, repo_dir, src_dir):
    """On a terminal, check shows the pack bytes checked of the total."""
    import pty
    import subprocess

    from conftest import anytime_command

    anytime("init", check=0)
    (src_dir / "a.bin").write_bytes(os.urandom(400_000))
    anytime("snapshot", src_dir, check=0)
    master, slave = pty.openpty()
    with subprocess.Popen([anytime_command(), "check"], stderr=slave,
                          stdout=subprocess.DEVNULL,
                          env=dict(os.environ, ANYTIME_REPO=str(repo_dir))) as p:
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the child has closed the terminal
                break
            if not chunk:
                break
            out += chunk
    os.close(master)
    assert p.returncode == 0
    assert b"100.0%" in out and b"MB" in out, out
