"""A damaged block is not reused: once found (by ``check`` or by any read), the next
snapshot that meets its content stores it again and the index points at the new copy,
so every instant that used it reads right again. Real packs, real flipped bytes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

BS = 65536


def flip_block_of(repo_dir, data: bytes) -> None:
    """Flip one byte inside the stored copy of a block of ``data`` (random, stored raw)."""
    probe = data[BS + 1000:BS + 1032]  # inside block 1
    for pack in repo_dir.glob("packs/*/*.pack"):
        raw = bytearray(pack.read_bytes())
        i = raw.find(probe)
        if i >= 0:
            raw[i] ^= 0x55
            pack.write_bytes(bytes(raw))
            return
    pytest.fail("the block's bytes are in no pack")


def first_instant(anytime, path) -> str:
    return json.loads(anytime("log", path, "--json", check=0).stdout)[0]["instant"]


@pytest.mark.parametrize("found_by", ["check", "cat"])
def test_a_damaged_block_is_stored_again_and_heals_every_instant(anytime, repo_dir,
                                                                  src_dir, found_by):
    anytime("init", "--block-size", str(BS), check=0)
    data = os.urandom(5 * BS)
    f = src_dir / "a.bin"
    f.write_bytes(data)
    (src_dir / "b.txt").write_text("fine\n")
    anytime("snapshot", src_dir, check=0)
    t1 = first_instant(anytime, f)
    flip_block_of(repo_dir, data)

    if found_by == "check":
        r = anytime("check")
        assert r.returncode == 16, r.stderr
        err = r.stderr.decode()
        assert "fails its checksum" in err
        assert f"spoils {src_dir.name}:/a.bin from {t1} on" in err, err
        assert f"'anytime snapshot {src_dir}'" in err
        report = json.loads(anytime("check", "--json", check=16).stdout)
        (bad,) = report["damaged"]
        hits = bad["affected"]  # every block that reads a slice of the damaged chunk
        assert {(h["path"], h["from"], h["to"]) for h in hits} == {("a.bin", t1, None)}
        assert 1 in {h["block_no"] for h in hits}
        assert report["ok"] is False
    else:
        r = anytime("cat", f)
        assert r.returncode == 16 and b"damaged" in r.stderr
        assert b"anytime snapshot" in r.stderr
    assert (repo_dir / "damaged").exists(), "the finding is recorded for the writer"

    os.utime(f)  # the live file is intact; touched, so the scan reads it again
    anytime("snapshot", src_dir, check=0)
    assert anytime("cat", f, check=0).stdout == data, "the new commit reads right"
    assert anytime("cat", f, "--at", t1, check=0).stdout == data, "and so does the past"
    r = anytime("check", "--read-data", check=0)
    assert b"no problems found" in r.stdout
    report = json.loads(anytime("check", "--json", check=0).stdout)
    assert report["reclaimable"] >= 1 and report["damaged"] == []


def test_check_names_the_instants_a_lost_block_spoils(anytime, repo_dir, src_dir):
    """The live file changed before the damage was found: its old content is gone, so
    the instants up to the change stay spoiled, and check says from when to when."""
    anytime("init", "--block-size", str(BS), check=0)
    data = os.urandom(5 * BS)
    f = src_dir / "a.bin"
    f.write_bytes(data)
    anytime("snapshot", src_dir, check=0)
    t1 = first_instant(anytime, f)
    os.rename(f, src_dir / "renamed.bin")  # the same file under a second name
    anytime("snapshot", src_dir, check=0)
    with open(src_dir / "renamed.bin", "r+b") as g:
        g.seek(BS)
        g.write(os.urandom(BS))  # block 1 rewritten: its old content now only stored
    anytime("snapshot", src_dir, check=0)
    versions = json.loads(anytime("log", src_dir / "renamed.bin", "--json", check=0).stdout)
    t2, t3 = versions[0]["instant"], versions[-1]["instant"]
    flip_block_of(repo_dir, data)

    r = anytime("check")
    assert r.returncode == 16
    err = r.stderr.decode()
    assert f"spoils {src_dir.name}:/a.bin from {t1} to {t2}" in err, err
    assert f"spoils {src_dir.name}:/renamed.bin from {t2} to {t3}" in err, err
    anytime("snapshot", src_dir, check=0)  # nothing to store it from: stays damaged
    assert anytime("cat", src_dir / "renamed.bin", check=0).stdout == (
        src_dir / "renamed.bin").read_bytes(), "the latest instant never used it"
    assert anytime("cat", src_dir / "a.bin", "--at", t1).returncode == 16
    assert anytime("check").returncode == 16


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs /dev/fuse and fusermount3 for a real mount")
def test_a_read_through_the_mount_records_the_damage(anytime, repo_dir, src_dir, tmp_path):
    """The mount is a reader: it records the damaged block (no writer lock, no index
    write) and answers EIO; the next snapshot stores the block again."""
    anytime("init", "--block-size", str(BS), check=0)
    data = os.urandom(5 * BS)
    f = src_dir / "a.bin"
    f.write_bytes(data)
    anytime("snapshot", src_dir, check=0)
    flip_block_of(repo_dir, data)
    mp = tmp_path / "mnt"
    mp.mkdir()

    def read_mounted() -> bytes:
        anytime("mount", src_dir, mp, check=0)
        try:
            return (mp / "latest" / "a.bin").read_bytes()
        finally:
            anytime("umount", mp)
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)

    with pytest.raises(OSError) as err:
        read_mounted()
    assert err.value.errno == errno.EIO
    assert (repo_dir / "damaged").read_text().strip(), "the mount recorded it"
    os.utime(f)
    anytime("snapshot", src_dir, check=0)
    assert read_mounted() == data


def test_a_restore_records_a_block_that_does_not_match_its_id(anytime, repo_dir, src_dir,
                                                               tmp_path):
    """A record rewritten whole (bytes and checksum agree, content wrong) passes the pack
    checksum: only the restore's hash against the block id catches it, and it is recorded
    so the next snapshot stores the block again."""
    import xxhash

    from anytime.store.format import RECORD_HEADER
    from anytime.store.packs import iter_records
    from anytime.store.packstore import LocalDirPackStore

    anytime("init", "--block-size", str(BS), check=0)
    data = os.urandom(3 * BS)
    f = src_dir / "a.bin"
    f.write_bytes(data)
    anytime("snapshot", src_dir, check=0)
    probe = data[BS + 1000:BS + 1032]
    for pack in repo_dir.glob("packs/*/*.pack"):
        raw = bytearray(pack.read_bytes())
        i = raw.find(probe)
        if i < 0:
            continue
        off = max(o for o, *_ in iter_records(LocalDirPackStore(str(repo_dir)),
                                                  bytes.fromhex(pack.stem)) if o < i)
        raw[i] ^= 0x55
        h = RECORD_HEADER.size
        fields = list(RECORD_HEADER.unpack_from(raw, off))  # ..., stored length, xxh3
        stored = bytes(raw[off + h:off + h + fields[-2]])
        fields[-1] = xxhash.xxh3_64_intdigest(stored)
        RECORD_HEADER.pack_into(raw, off, *fields)
        pack.write_bytes(bytes(raw))
        break
    else:
        pytest.fail("the block's bytes are in no pack")
    assert not (repo_dir / "damaged").exists()

    r = anytime("restore", f, "--at", "now", "--to", tmp_path / "out", "--json")
    assert r.returncode == 3, r.stderr
    err = r.stderr.decode()
    assert "out: block " in err and " is damaged" in err and "does not match its id" in err, err
    assert not (tmp_path / "out").exists(), "a damaged file is not left half-written"
    assert (repo_dir / "damaged").read_text().count("does not match its id") == 1

    os.utime(f)
    anytime("snapshot", src_dir, check=0)
    anytime("restore", f, "--at", "now", "--to", tmp_path / "out", check=0)
    assert (tmp_path / "out").read_bytes() == data
