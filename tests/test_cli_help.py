"""What a new user finds out from the command itself: --version, -r, every command's
--help, the instant syntax and exit codes, ls -a/-R/--json, aligned log columns, and a
start-up that imports only what the command needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import anytime_command

from anytime.store import errors
from anytime.tools.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def test_version(anytime):
    r = anytime("--version", check=0)
    assert r.stdout.decode() == f"anytime {version('anytime')}\n"


def test_short_repo_option_before_and_after_the_command(anytime, tmp_path, src_dir):
    other = tmp_path / "other"
    no_env = {"ANYTIME_REPO": None}
    anytime("-r", other, "init", env=no_env, check=0)
    (src_dir / "f").write_text("x")
    anytime("snapshot", "-r", other, src_dir, env=no_env, check=0)
    assert anytime("cat", src_dir / "f", "-r", other, env=no_env, check=0).stdout == b"x"
    assert anytime(f"--repo={other}", "ls", src_dir, env=no_env, check=0).stdout == b"f\n"
    assert b"-r DIR, --repo DIR" in anytime("ls", "--help", check=0).stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_says_what_it_does(anytime, command):
    out = anytime(command, "--help", check=0).stdout.decode()
    usage, _, rest = out.partition("\n\n")
    assert usage.startswith(f"usage: anytime {command}")
    description = rest.split("\n\n")[0]
    assert description and not description.startswith(("positional", "options")), out
    assert description.rstrip().endswith("."), description


def test_top_help_lists_instants_and_every_exit_code(anytime):
    out = anytime("--help", check=0).stdout.decode()
    for form in ("10 minutes ago", "-2h", "@", "yesterday 17:00", "label", "live"):
        assert form in out
    for code, meaning in errors.EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning)}$", out, re.M), (code, out)
    used = {c.exit_code for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, errors.AnytimeError)}
    assert used <= {code for code, _ in errors.EXIT_CODES}


def test_top_help_lists_every_command_whatever_follows(anytime):
    """``anytime --help`` builds no command's parser, yet lists every command as the
    full parser does; ``-h`` before a command shows the same list."""
    from anytime.tools.cli import build_parser

    full = build_parser().format_help()
    assert build_parser([]).format_help() == full
    assert anytime("--help", check=0).stdout.decode() == full
    assert anytime("-h", "ls", check=0).stdout.decode() == full


def test_command_found_however_the_line_is_written(anytime, repo_dir, src_dir):
    """The parsers of the command's module alone are built; a command line whose
    command sits where the quick look misses it (after an abbreviated --repo) still
    parses, errors included."""
    anytime("init", check=0)
    (src_dir / "f").write_text("x")
    anytime("snapshot", src_dir, check=0)
    assert anytime("--rep", repo_dir, "ls", src_dir, check=0).stdout == b"f\n"
    r = anytime("--rep", repo_dir, "ls", "--bogus", src_dir, check=2)
    assert b"unrecognized arguments: --bogus" in r.stderr
    assert anytime("--rep", repo_dir, "cat", "--help", check=0).stdout.startswith(
        b"usage: anytime cat")


#: Runs ``anytime ARGV`` in this process and writes the names of the modules it
#: imported (those in ``sys.modules`` afterwards that the interpreter had not loaded
#: before) to the file named first. sys.modules sees every import, however it is made
#: (python -X importtime misses importlib.import_module).
PROBE = """import sys
out, sys.argv[1:] = sys.argv[1], sys.argv[2:]
before = set(sys.modules)
from anytime.tools.cli import main
try:
    code = main()
except SystemExit as e:
    code = e.code
with open(out, "w") as f:
    f.write("\\n".join(set(sys.modules) - before))
sys.exit(code)
"""


def imported(tmp_path, *args) -> set[str]:
    """The modules ``anytime ARGS`` imports, run on a repository."""
    env = dict(os.environ, ANYTIME_REPO=str(tmp_path / "repo"))
    out = tmp_path / "modules"
    r = subprocess.run([sys.executable, "-c", PROBE, out, *args], capture_output=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(out.read_text().split())


def test_start_up_imports_only_what_the_command_needs(anytime, tmp_path, src_dir):
    """Import cost is start-up time: ``--help`` needs no store and no command module,
    ``ls --help`` its own only; ``ls``/``log``/``cat`` no capture, FUSE, dataclasses
    (they import inspect), datetime (instants print through the time module) or
    hashing and decompression they do not do."""
    anytime("init", check=0)
    (src_dir / "f").write_bytes(b"compressible text\n" * 500)
    anytime("snapshot", src_dir, check=0)
    mods = imported(tmp_path, "--help")
    assert not mods & {"lmdb", "anytime.store.repo", "shutil", "zlib", "json", "datetime",
                       "zstandard", "xxhash", "blake3"}
    assert not {m for m in mods if m.startswith("anytime.tools.cmd_")}, mods
    mods = imported(tmp_path, "ls", "--help")
    assert {m for m in mods if m.startswith("anytime.tools.cmd_")} == {"anytime.tools.cmd_read"}
    assert "lmdb" not in mods
    never = {"anytime.capture", "mfusepy", "dataclasses", "inspect", "concurrent.futures",
             "logging", "subprocess", "importlib.metadata", "blake3", "secrets", "ctypes",
             "datetime"}
    for args in (["ls", "-l", src_dir], ["log", src_dir], ["log", src_dir / "f"]):
        mods = imported(tmp_path, *map(str, args))
        assert "lmdb" in mods and not mods & (never | {"zstandard", "xxhash", "typing"}), args
    mods = imported(tmp_path, "cat", str(src_dir / "f"))
    assert {"zstandard", "xxhash"} <= mods and not mods & never


@pytest.fixture
def listed_tree(anytime, src_dir):
    anytime("init", check=0)
    (src_dir / "sub" / ".hidden-dir").mkdir(parents=True)
    (src_dir / "sub" / ".hidden-dir" / "in-hidden").write_text("h")
    (src_dir / "sub" / "deep").write_text("deep")
    (src_dir / ".dotfile").write_text("dot")
    (src_dir / "top").write_text("top file")
    os.symlink("top", src_dir / "link")
    anytime("snapshot", src_dir, check=0)
    return src_dir


def test_ls_hides_dotfiles_unless_all(anytime, listed_tree):
    assert anytime("ls", listed_tree, check=0).stdout == b"link\nsub\ntop\n"
    assert anytime("ls", "-a", listed_tree, check=0).stdout == b".dotfile\nlink\nsub\ntop\n"
    assert anytime("ls", listed_tree / ".dotfile", check=0).stdout == b".dotfile\n"


def test_ls_recursive(anytime, listed_tree):
    src = str(listed_tree)
    out = anytime("ls", "-R", src, check=0).stdout.decode()
    assert out == f"{src}:\nlink\nsub\ntop\n\n{src}/sub:\ndeep\n"
    out = anytime("ls", "-R", "-a", "src:sub", check=0).stdout.decode()
    assert out == "src:sub:\n.hidden-dir\ndeep\n\nsrc:sub/.hidden-dir:\nin-hidden\n"


def test_ls_json(anytime, listed_tree):
    src = str(listed_tree)
    rows = json.loads(anytime("ls", "--json", src, check=0).stdout)
    by_name = {r["name"]: r for r in rows}
    assert sorted(by_name) == ["link", "sub", "top"]
    top = by_name["top"]
    assert top["kind"] == "file" and top["size"] == 8 and top["path"] == f"{src}/top"
    assert top["permissions"].startswith("-rw") and top["mtime_ns"] > 0
    assert by_name["link"]["kind"] == "symlink" and by_name["link"]["target"] == "top"
    assert by_name["sub"]["kind"] == "dir"
    rows = json.loads(anytime("ls", "--json", "-R", "-a", src, check=0).stdout)
    assert f"{src}/sub/.hidden-dir/in-hidden" in {r["path"] for r in rows}
    assert len(rows) == 7


def test_log_columns_line_up(anytime, src_dir):
    anytime("init", check=0)
    (src_dir / "f").write_text("x")
    anytime("snapshot", src_dir, "--label", "a-long-label-name", check=0)
    for i in range(120):
        (src_dir / f"n{i}").write_bytes(b"y" * 1000)
    (src_dir / "f").write_bytes(b"z" * 123456)
    anytime("snapshot", src_dir, check=0)
    os.unlink(src_dir / "f")
    anytime("snapshot", src_dir, check=0)
    lines = anytime("log", src_dir, check=0).stdout.decode().splitlines()
    assert len(lines) == 3
    # every column ends (numbers) or starts (words) at the same place on every row
    ends = [[m.end() for m in re.finditer(r"\d+ changed|\d+ deleted|[\d.]+ MB new", ln)]
            for ln in lines]
    assert len(ends[0]) == 3 and ends.count(ends[0]) == 3, lines
    lines = anytime("log", src_dir / "f", check=0).stdout.decode().splitlines()
    assert [ln.split()[1] for ln in lines] == ["created", "modified", "deleted"]
    cols = [re.match(r"(\S+)\s+(\S+)\s+(\S+)", ln) for ln in lines]
    assert len({(m.start(2), m.end(3)) for m in cols}) == 1, lines


def test_man_page_is_current_and_renders(tmp_path):
    """docs/anytime.1 is what the parser says now (regenerate it with
    'python -m anytime.tools.manpage > docs/anytime.1'), and man renders it."""
    from anytime.tools.manpage import render

    page = ROOT / "docs" / "anytime.1"
    assert page.read_text() == render(version("anytime")), \
        "docs/anytime.1 is stale: run .venv/bin/python -m anytime.tools.manpage > docs/anytime.1"
    r = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                       env=dict(os.environ, MANPAGER="cat", MANWIDTH="100", LC_ALL="C.UTF-8"))
    assert r.returncode == 0, r.stderr
    text = re.sub(r".\x08", "", r.stdout)  # overstrike bold/underline
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "INSTANTS AND PATHS", "EXIT STATUS"):
        assert f"\n{heading}" in text
    for command in COMMANDS:
        assert re.search(rf"anytime\s+{command}\b", text), command
    assert "--from" in text and "10 minutes ago" in text and "interrupted" in text
    assert "warning" not in r.stderr.lower()


def test_progress_lines_have_totals_percentage_and_eta():
    from anytime.capture.scan import ScanReport
    from anytime.tools.progress import Progress

    r = ScanReport(files=40, dirs=9, others=1, files_read=1, bytes_read=2_500_000, changed=3)
    line = Progress(enabled=True, expect_entries=200).scan_line(r, elapsed=5.0)
    assert line.startswith("50 of ~200 entries (25%), read 1 file (2.5 MB), 3 changed")
    assert line.endswith("ETA 0:15")
    line = Progress(enabled=True).scan_line(ScanReport(files=1, dirs=2), elapsed=1.0)
    assert line.startswith("1 file, 2 dirs, read 0 files") and "ETA" not in line
    line = Progress.bytes_line(25_000_000, 100_000_000, "checking", elapsed=60.0)
    assert "25.0%" in line and "25.0/100.0 MB" in line and "ETA 3:00" in line
    assert "ETA 1:00:00" in Progress.bytes_line(1, 2, "", elapsed=3600.0)


def test_snapshot_progress_knows_the_total_from_the_previous_commit(anytime, repo_dir,
                                                                     src_dir):
    """On a terminal, a re-scan's progress says how far it is of the entries the last
    commit counted."""
    anytime("init", check=0)
    for i in range(30):
        (src_dir / f"f{i}").write_text("x")
    anytime("snapshot", src_dir, check=0)
    master, slave = os.openpty()
    try:
        r = subprocess.run([anytime_command(), "snapshot", str(src_dir)], stderr=slave,
                           stdout=subprocess.DEVNULL, env=dict(os.environ, ANYTIME_REPO=str(repo_dir)))
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert r.returncode == 0, shown
    assert re.search(rb"\d+ of ~31 entries \(\d+%\)", shown), shown


def test_counts_agree_with_their_nouns(anytime, src_dir):
    anytime("init", check=0)
    (src_dir / "only").write_text("x")
    out = anytime("snapshot", src_dir, check=0).stdout.decode()
    assert "1 file, 1 dir; read 1 file (" in out, out
    vols = anytime("volumes", check=0).stdout.decode()
    assert " 1 commit " in vols and "commits" not in vols
    os.symlink("only", src_dir / "link")
    os.mkfifo(src_dir / "fifo")
    (src_dir / "two").write_text("y")
    out = anytime("snapshot", src_dir, check=0).stdout.decode()
    assert "2 files, 1 dir, 1 symlink, 1 other entry; read 1 file (" in out, out
    assert " 2 commits " in anytime("volumes", check=0).stdout.decode()


def test_check_and_restore_count_in_the_singular_too(anytime, src_dir):
    anytime("init", check=0)
    (src_dir / "only").write_text("one small file")
    anytime("snapshot", src_dir, "--label", "one", check=0)
    out = anytime("check", check=0).stdout.decode()
    assert "1 block," in out and "1 block version checked" in out, out
    (src_dir / "only").write_text("changed since")
    r = anytime("restore", src_dir / "only", "--at", "one", "--in-place", check=15)
    assert b"1 existing entry differs from the version at" in r.stderr, r.stderr
