"""Thinning a volume's history to the commits a retention plan keeps (``anytime prune``).

Terms:
  kept commit     a commit the plan keeps: its view stays exactly what it was, every path.
  dropped commit  a commit the plan removes; a view at its instant shows the newest kept
                  commit before it (its ``commits`` record is deleted, and the next kept
                  commit's record says from when views are thinned: ``thinned_from``).
  whole commit    a kept *timed* commit (the shim's, whose records carry their own
                  operations' instants) whose interior stays continuous: every instant
                  after its ``timed_from`` (by default the commit before it) up to its own
                  instant is still a view. A kept timed commit that is not whole is
                  *coarsened*: it becomes an ordinary commit, one point.
  view point      an instant some kept view reads at: a kept commit's instant, or an
                  instant of a whole commit's interior.
  needed          a version (of a path, or of a block of a file) at instant t, whose key's
                  next version is at t_next (none: forever), is needed when a view point
                  lies in [t, t_next). A version that is not needed is deleted: no kept
                  view changes, since none reads it.
  target          the instant a needed version is moved to: the first view point at or
                  after t (t itself when it is one). Moving it there changes no kept view
                  (none lies in [t, target)) and leaves every version at an instant of a
                  kept commit or inside a whole commit's interior (I15).
  changed commit  a kept commit whose records change: one that versions move onto (the
                  commit before it is dropped) or that is coarsened. The index records of
                  each changed commit are written to the packs again as a new
                  *generation* (new nonce), so a rebuild of the index from the packs gives
                  the thinned history; the old generation's and the dropped commits'
                  history records are *dead* from then on.

The rule is the same however often it is applied: thinning to S and then to a subset of S
gives what thinning to that subset at once gives. So an interrupted prune, run again with
the same plan (kept in the ``prune/`` marker), ends where it would have ended.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: No next version: the version is the newest of its key.
FOREVER = 2**64


@dataclass
class VolumePlan:
    """What a prune does to one volume's history: ``kept`` commit instants (sorted, the
    newest commit, the ``horizon``, always among them), ``whole`` (kept timed commits kept
    continuous: instant -> the instant their interior starts after), ``dropped`` and
    ``coarsened`` (kept timed commits thinned to a point)."""

    vol: int
    horizon: int
    kept: list[int]
    dropped: list[int]
    whole: dict[int, int] = field(default_factory=dict)
    coarsened: list[int] = field(default_factory=list)
    #: every commit before thinning, in order: instant -> the commit before it (0: none)
    previous: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"vol": self.vol, "horizon": self.horizon, "kept": self.kept,
                "dropped": self.dropped, "coarsened": self.coarsened,
                "whole": {str(k): v for k, v in self.whole.items()},
                "previous": {str(k): v for k, v in self.previous.items()}}

    @classmethod
    def from_json(cls, d: dict) -> VolumePlan:
        return cls(int(d["vol"]), int(d["horizon"]), [int(x) for x in d["kept"]],
                   [int(x) for x in d["dropped"]],
                   {int(k): int(v) for k, v in d["whole"].items()},
                   [int(x) for x in d["coarsened"]],
                   {int(k): int(v) for k, v in d["previous"].items()})

    @property
    def empty(self) -> bool:
        return not self.dropped and not self.coarsened

    def target(self, t: int) -> int | None:
        """The first view point at or after ``t``; None when there is none (a version
        after the plan's horizon is never asked about)."""
        i = bisect.bisect_left(self.kept, t)
        if i == len(self.kept):
            return None
        k = self.kept[i]
        a = self.whole.get(k)
        if a is None:
            return k
        return t if t > a else a + 1

    def owner(self, t: int) -> int:
        """The kept commit whose records include a version at view point ``t``."""
        return self.kept[bisect.bisect_left(self.kept, t)]

    def changed(self) -> dict[int, int]:
        """Changed commits: kept instant -> the instant from which views before it are
        thinned (they show the kept commit before): the first dropped commit after the
        previous kept one, or a coarsened commit's interior."""
        dropped = set(self.dropped)
        coarse = set(self.coarsened)
        out: dict[int, int] = {}
        for k in self.kept:
            p = self.previous.get(k, 0)
            first = None
            while p and p in dropped:  # walk back over the dropped commits before k
                first = p
                p = self.previous.get(p, 0)
            if k in coarse:
                first = min(first or k, self.previous.get(k, 0) + 1)
            if first is not None:
                out[k] = first
        return out


def decide_one(plan: VolumePlan, t: int, nxt: int) -> int | None:
    """Where a version at ``t`` whose key's next version is at ``nxt`` (FOREVER: none)
    goes: as :func:`decide`, for one version."""
    if t > plan.horizon:
        return t
    tgt = plan.target(t)
    return tgt if tgt is not None and tgt < nxt else None


def decide(plan: VolumePlan, instants: list[int]) -> list[int | None]:
    """For the versions of one key at ``instants`` (ascending), where each goes: its
    target (its own instant: unchanged), or None (deleted). Versions after the plan's
    horizon stay."""
    out: list[int | None] = []
    n = len(instants)
    for i, t in enumerate(instants):
        if t > plan.horizon:
            out.append(t)
            continue
        nxt = instants[i + 1] if i + 1 < n else FOREVER
        tgt = plan.target(t)
        out.append(tgt if tgt is not None and tgt < nxt else None)
    return out
