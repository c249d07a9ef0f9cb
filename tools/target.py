"""Turning what people type (a path, ``VOLUME:PATH``, an instant) into a volume, a path
inside it and an instant.

A *target* is (volume, path inside the volume as bytes). The original absolute path of
a protected file works anywhere a path is asked for, and so does ``VOLUME:PATH``.
"""

from __future__ import annotations

import os
import sys

from anytime.store import timeline
from anytime.store.errors import BeforeHistory, NotProtected, PathNotFound, UnknownVolume
from anytime.store.volumes import Volume, find_by_source, get_volume
from anytime.vfs.instants import format_instant, parse_instant
from anytime.vfs.view import View, norm


class Target:
    """A volume and a path inside it (bytes, ``b""`` for the root)."""

    __slots__ = ("vol", "path")

    def __init__(self, vol: Volume, path: bytes):
        self.vol = vol
        self.path = path

    @property
    def display(self) -> str:
        return f"{self.vol.name}:/{os.fsdecode(self.path)}"

    @property
    def original(self) -> str:
        return os.fsdecode(self.vol.source_path(self.path))


def resolve_target(repo, text: str) -> Target:
    with repo.read_txn() as txn:
        if ":" in text and not text.startswith("/"):
            volname, _, inner = text.partition(":")
            try:
                return Target(get_volume(repo, txn, volname), norm(inner))
            except UnknownVolume:
                pass
        if "/" not in text and not os.path.exists(text):
            try:
                return Target(get_volume(repo, txn, text), b"")
            except UnknownVolume:
                pass
        absolute = os.path.abspath(text)
        vol = find_by_source(repo, txn, absolute)
        if vol is None:
            raise NotProtected(f"{text} is not a volume and not inside any protected tree; "
                               f"'anytime volumes' lists what is protected")
        rel = os.path.relpath(absolute, vol.source)
        return Target(vol, b"" if rel == "." else norm(os.fsencode(rel)))


def resolve_instant(repo, vol: Volume, text: str | None, strict: bool = True) -> int:
    """The instant ``text`` names for ``vol`` (None means now). Labels work as instants.

    With ``strict``, an instant before the volume's first commit raises BeforeHistory
    naming when history starts.
    """
    with repo.read_txn() as txn:
        t = parse_instant(text or "now",
                          labels=lambda name: timeline.label_instant(repo, txn, vol.id, name))
        if strict:
            first = timeline.first_commit(repo, txn, vol.id)
            if first is None:
                raise BeforeHistory(f"volume '{vol.name}' has no commits yet; capture it "
                                    f"first ('anytime snapshot {vol.source}')")
            if t < first:
                gone = " (the history before it was thinned by 'anytime prune')" if \
                    timeline.thinned(repo, txn, vol.id, t) is not None else ""
                raise BeforeHistory(
                    f"{text} ({format_instant(t)}) is before the history of '{vol.name}', "
                    f"which starts at {format_instant(first)}{gone}")
        shown = timeline.thinned(repo, txn, vol.id, t) if text else None
    if shown:
        print(f"anytime: {text} ({format_instant(t)}) was thinned by 'anytime prune': "
              f"showing the kept instant {format_instant(shown)}", file=sys.stderr)
    return t


def view_for(repo, target: Target, at: str | None) -> View:
    return View(repo, target.vol, resolve_instant(repo, target.vol, at))


def lookup_at(repo, args):
    """(target, view, entry) of ``args.path`` at ``args.at``; PathNotFound if absent then."""
    target = resolve_target(repo, args.path)
    view = view_for(repo, target, args.at)
    e = view.lookup(target.path)
    if e is None:
        raise PathNotFound(f"{target.display} does not exist at "
                           f"{format_instant(view.instant)}; 'anytime log {args.path}' "
                           f"shows when it existed")
    return target, view, e
