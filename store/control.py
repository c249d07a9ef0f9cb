"""Requests to the process that holds the writer lock, from other processes.

A writer session (store/session.py) holds the writer lock for as long as continuous
capture runs: days. Writes other processes make under that lock, labels above all
(``anytime mark`` before an upgrade), would otherwise wait for it to stop. So the
session serves them: it listens on a *control socket* and makes the write itself,
under the lock it holds, exactly as the requesting process would have.

Terms:
  control socket  a Unix stream socket in the abstract namespace (no file: nothing
                  stale is left by a killed process), named after the repository's
                  real path (:func:`address`). One request per connection: a JSON
                  object on one line, answered by one JSON line: ``{"ok": true, ...}``
                  or ``{"ok": false, "error": MESSAGE, "exit_code": N}``.
  peers           the server answers only processes of its own user or root
                  (``SO_PEERCRED``); a client talks only to a server run by root or by
                  the repository directory's owner, so a local user who took the name
                  first can neither fake an answer nor learn a request.

Requests (``op``): ``set_label`` (``vol``, ``name``, ``instant``, ``force``; answers
``old``), ``remove_label`` (``vol``, ``name``; answers ``removed``), ``set_policy``
(``vol``, ``policy``: a policy's JSON object or null; answers ``done``), ``add_hold``
(``vol``, ``hold``: a hold's JSON object; answers ``done``), ``release_hold`` (``vol``,
``which``: a hold id or a label; answers ``released``), ``prune`` (``vols``: volume ids
or null for all, ``dry_run``; answers ``report``: run by the session between two
commits, ``PRUNE_TIMEOUT`` at most). A request larger than ``MAX_REQUEST`` bytes, or not
sent within ``TIMEOUT`` seconds, is dropped.
:func:`as_writer` is how the store's own writes choose between the lock and a request.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading

from .errors import AnytimeError, RepositoryLocked

MAX_REQUEST = 64 << 10
TIMEOUT = 5.0
#: Seconds a client waits for the answer (a label write: a pack and a transaction).
ANSWER_TIMEOUT = 30.0
#: Seconds a client waits for a prune the capture runs for it (between two commits).
PRUNE_TIMEOUT = 6 * 3600.0
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def address(root: str) -> bytes:
    """The abstract socket address of the repository at ``root``."""
    h = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:32]
    return b"\0anytime-writer-" + h.encode()


def _peer_uid(sock: socket.socket) -> int:
    return _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        _CRED.size))[1]


class ControlServer:
    """Serves requests for ``repo`` from a thread of its own; the caller holds the
    writer lock from :meth:`start` to :meth:`close`."""

    def __init__(self, repo, lock=None, session=None):
        self.repo = repo
        self.lock = lock or threading.Lock()  # the session's: see WriterSession.lock
        self.session = session  # runs tasks between its commits (prune)
        self.sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.served = 0

    def start(self) -> bool:
        """Listen; False if the address is taken (another user's process: requests then
        fail in their clients, as with no server)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(address(self.repo.root))
        except OSError:
            s.close()
            return False
        s.listen(16)
        self.sock = s
        self._thread = threading.Thread(target=self._serve, name="anytime-control",
                                        daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self._thread is not None:
            self._thread.join()  # a label write under way ends before the lock goes

    def _serve(self) -> None:
        me = os.getuid()
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    if _peer_uid(conn) not in (0, me):
                        continue
                    conn.settimeout(TIMEOUT)
                    request = _read_line(conn)
                    answer = self._answer(request) if request is not None else None
                    if answer is not None:
                        conn.sendall(json.dumps(answer).encode() + b"\n")
                except Exception:  # noqa: BLE001 - one request failing never ends the server
                    continue

    def _answer(self, raw: bytes) -> dict:
        try:
            req = json.loads(raw)
            if req.get("op") == "prune":  # run by the session's owner, not under the lock
                answer = self._prune(req)
            else:
                with self.lock:
                    answer = self._do(req)
        except AnytimeError as e:
            return {"ok": False, "error": str(e), "exit_code": e.exit_code}
        except Exception as e:  # noqa: BLE001 - a malformed request: said to the client
            return {"ok": False, "error": f"malformed request ({e})", "exit_code": 2}
        if answer.get("ok"):
            self.served += 1
        return answer

    def _do(self, req: dict) -> dict:
        from . import policies, timeline
        from .retention import Hold, Policy

        op, vol = req["op"], int(req["vol"])
        if op == "set_label":
            old = timeline.set_label(self.repo, vol, str(req["name"]),
                                     int(req["instant"]), bool(req.get("force")))
            return {"ok": True, "old": old}
        if op == "remove_label":
            return {"ok": True, "removed": timeline.remove_label(self.repo, vol,
                                                                 str(req["name"]))}
        if op == "set_policy":
            pol = None if req["policy"] is None else Policy.from_dict(req["policy"])
            return {"ok": True, "done": policies.set_policy(self.repo, vol, pol)}
        if op == "add_hold":
            return {"ok": True, "done": policies.add_hold(self.repo, vol,
                                                          Hold.from_dict(req["hold"]))}
        if op == "release_hold":
            return {"ok": True, "released": policies.release_hold(self.repo, vol,
                                                                  str(req["which"]))}
        return {"ok": False, "error": f"unknown request {op!r}", "exit_code": 2}


    def _prune(self, req: dict) -> dict:
        from . import prune

        if self.session is None:
            return {"ok": False, "error": "this process cannot prune", "exit_code": 1}
        session = self.session
        try:  # thinning here, beside the commits; the garbage between two of them
            with session.prune_lock:
                rep = prune.apply_policies(self.repo, req.get("vols"), bool(req.get("dry_run")),
                                           run_gc=session.run_between, stop=session.stopping)
            return {"ok": True, "report": rep.to_json()}
        except RuntimeError as e:  # the capture stopped meanwhile
            return {"ok": False, "error": str(e), "exit_code": 1}


def _read_line(conn: socket.socket) -> bytes | None:
    buf = b""
    while b"\n" not in buf:
        part = conn.recv(4096)
        if not part:
            return None
        buf += part
        if len(buf) > MAX_REQUEST:
            return None
    return buf.split(b"\n", 1)[0]


def request(repo, req: dict, locked: RepositoryLocked, timeout: float = ANSWER_TIMEOUT
            ) -> dict:
    """Send ``req`` to the process holding ``repo``'s writer lock and return its
    answer; raises ``locked`` (what taking the lock raised) when no such process
    serves requests (a snapshot holds the lock), and the server's error as an
    :class:`AnytimeError` with its exit code."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        try:
            s.connect(address(repo.root))
        except OSError:
            raise locked from None
        owner = os.stat(repo.root).st_uid
        if _peer_uid(s) not in (0, owner):
            raise locked
        s.sendall(json.dumps(req).encode() + b"\n")
        raw = _read_line(s)
    except TimeoutError:
        raise AnytimeError(f"the anytime process writing to {repo.root} did not answer "
                           f"within {timeout:.0f} s; try again") from None
    finally:
        s.close()
    if raw is None:
        raise locked
    answer = json.loads(raw)
    if not answer.get("ok"):
        err = AnytimeError(answer.get("error", "the request failed"))
        err.exit_code = int(answer.get("exit_code", 1))
        raise err
    return answer


def as_writer(repo, req: dict, answer: str, write):
    """Run ``write()`` under ``repo``'s writer lock (taken here unless this object holds
    it) and return what it returns; when a writer session holds the lock, send ``req``
    to it instead (it runs the same write under its lock) and return its ``answer``
    field. Raises RepositoryLocked when another writer (a snapshot) holds the lock."""
    try:
        lock = repo.writer_lock()
        lock.__enter__()
    except RepositoryLocked as locked:  # a writer session makes the write for us
        return request(repo, req, locked)[answer]
    try:
        return write()
    finally:
        lock.__exit__(None, None, None)
