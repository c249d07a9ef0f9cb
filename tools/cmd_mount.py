"""``mount`` and ``umount``: a volume at an instant, or its time-travel view, as a drive.

``anytime mount`` returns once the drive is usable: it forks a daemon (double fork,
new session), which opens the repository (never before the fork: an LMDB environment
must not cross ``fork()``), mounts, and reports "ready" or an error through a pipe. The
parent prints that error and exits with its code (MountError: 17). ``--foreground``
serves in the calling process instead. See docs/mount.md.
"""

from __future__ import annotations

import os
import sys

from anytime.store.errors import AnytimeError, MountError, UsageError

from .cmd_repo import locate, open_repo

# logging, subprocess, the store and the vfs are imported by the functions that use
# them: a command's --help imports its module too (tools/cli.py).

#: How long ``anytime mount`` waits for the daemon to report the mount is live (s).
READY_TIMEOUT = 60.0


def register(sub, common) -> None:
    p = sub.add_parser("mount", parents=[common])
    p.add_argument("path", help="volume name or an original path of the volume")
    p.add_argument("mountpoint", help="an empty directory (a drive letter on Windows)")
    p.add_argument("--at", help="instant of the mount's root (default: time-travel view)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached; log to stderr too; Ctrl-C unmounts")
    p.add_argument("--log", help="log file (default: syslog)")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", parents=[common])
    p.add_argument("mountpoint")
    p.add_argument("-z", "--lazy", action="store_true",
                   help="detach now even if files are open; the drive goes when they close")
    p.set_defaults(func=cmd_umount)


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint; MountError if it cannot take a mount."""
    if sys.platform == "win32" and len(path) == 2 and path[1] == ":":
        return path.upper()  # a drive letter: WinFsp creates it
    mp = os.path.abspath(path)
    if not os.path.lexists(mp):
        raise MountError(f"the mountpoint {mp} does not exist; create an empty directory "
                         f"first (mkdir -p {mp})")
    if not os.path.isdir(mp):
        raise MountError(f"the mountpoint {mp} is not a directory")
    if os.path.ismount(mp):
        raise MountError(f"something is already mounted at {mp}; 'anytime umount {path}' "
                         f"first")
    try:
        if os.listdir(mp):
            raise MountError(f"the mountpoint {mp} is not empty; use an empty directory")
    except PermissionError:
        raise MountError(f"the mountpoint {mp} cannot be read; use a directory you own") from None
    return mp


def setup_logging(logfile: str | None, foreground: bool, debug: bool) -> None:
    import logging.handlers

    log = logging.getLogger()
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter(f"anytime-mount[{os.getpid()}]: %(levelname)s %(message)s")
    handlers: list[logging.Handler] = []
    if logfile:
        handlers.append(logging.FileHandler(logfile))
    elif os.path.exists("/dev/log"):
        handlers.append(logging.handlers.SysLogHandler(address="/dev/log"))
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    if logfile:  # timestamps in a plain file
        handlers[0].setFormatter(logging.Formatter("%(asctime)s " + fmt._fmt))


def _namespace(args):
    """Open the repository and build the namespace (in the process that serves)."""
    from anytime.vfs.namespace import Namespace

    from .target import resolve_instant, resolve_target

    repo = open_repo(args)
    try:
        target = resolve_target(repo, args.path)
        if target.path:
            raise UsageError(f"{args.path} is inside volume '{target.vol.name}'; mount the "
                             f"whole volume ('anytime mount {target.vol.name} ...')")
        at = resolve_instant(repo, target.vol, args.at) if args.at else None
        # Windows names cannot hold ':': list instants as 20261124T100317Z there
        return repo, Namespace(repo, target.vol, at, basic_names=sys.platform == "win32")
    except BaseException:
        repo.close()
        raise


def cmd_mount(args) -> int:
    mp = check_mountpoint(args.mountpoint)
    args.repo = locate(args.repo)
    if args.log:
        args.log = os.path.abspath(args.log)
    if args.foreground or not hasattr(os, "fork"):  # Windows: no fork, serve attached
        setup_logging(args.log, True, args.debug)
        from anytime.vfs import fuse

        repo, ns = _namespace(args)
        try:
            # Ctrl-C (SIGINT), SIGTERM and SIGHUP unmount: a normal end, exit 0
            fuse.serve(ns, mp, on_ready=lambda: fuse.raise_readahead(mp), debug=args.debug)
        finally:
            repo.close()
        return 0
    return _daemonize(args, mp)


def _daemonize(args, mp: str) -> int:
    import select

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: detach, fork again, and exit so the daemon is not our child
        os.close(r)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _daemon(args, mp, w)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    msg = b""
    deadline_left = READY_TIMEOUT
    while deadline_left > 0:
        ready, _, _ = select.select([r], [], [], 1.0)
        deadline_left -= 1.0
        if ready:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            msg += chunk
    os.close(r)
    if msg.startswith(b"OK"):
        return 0
    if msg.startswith(b"E"):
        code, _, text = msg[1:].decode(errors="replace").partition(" ")
        err = MountError(text.strip())
        err.exit_code = int(code) if code.isdigit() else MountError.exit_code
        raise err
    raise MountError(f"the mount at {mp} did not come up"
                     f"{' in time' if deadline_left <= 0 else ''}; "
                     f"see the log ({args.log or 'syslog'}) or run with --foreground")


def _daemon(args, mp: str, w: int) -> None:
    """The mount process: open the repository, mount, report through ``w``, serve."""
    import logging

    reported = False

    def report(msg: bytes) -> None:
        nonlocal reported
        if not reported:
            reported = True
            try:
                os.write(w, msg)
            finally:
                os.close(w)

    def ready() -> None:
        from anytime.vfs import fuse

        fuse.raise_readahead(mp)
        try:
            os.stat(mp)  # answered once the kernel's INIT is done: the drive is usable
        except OSError as e:
            logging.getLogger("anytime.mount").error("mount at %s not usable: %s", mp, e)
            return
        logging.getLogger("anytime.mount").info("mounted %s at %s", args.path, mp)
        report(b"OK\n")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

    try:
        setup_logging(args.log, False, args.debug)
        repo, ns = _namespace(args)
    except AnytimeError as e:
        report(f"E{e.exit_code} {e}".encode())
        return
    except Exception as e:
        report(f"E{MountError.exit_code} {e}".encode())
        return
    try:
        os.chdir("/")
        from anytime.vfs import fuse

        fuse.serve(ns, mp, on_ready=ready, debug=args.debug)
    except Exception as e:
        logging.getLogger("anytime.mount").error("mount at %s failed: %s", mp, e)
        report(f"E{MountError.exit_code} could not mount {mp}: {e}".encode())
    finally:
        report(f"E{MountError.exit_code} the mount at {mp} ended before it was "
               f"ready".encode())
        repo.close()


def cmd_umount(args) -> int:
    import shutil
    import subprocess

    mp = os.path.abspath(args.mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u"] + (["-z"] if args.lazy else []) + [mp]
    elif shutil.which("umount"):
        cmd = ["umount"] + (["-l"] if args.lazy else []) + [mp]
    else:
        raise MountError("neither fusermount3 nor umount is installed; install fuse3")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip()
        hint = ""
        if "busy" in why.lower():
            hint = "; files are open under it: close them, or use 'anytime umount --lazy'"
        elif not os.path.ismount(mp):
            hint = "; nothing is mounted there"
        raise MountError(f"could not unmount {mp}: {why}{hint}")
    return 0
