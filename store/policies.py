"""Retention policies and holds of volumes, kept in the repository.

What they mean is store/retention.py's; this module stores them:

  ``meta`` ``policy/`` + volume id u32 BE    the volume's :class:`Policy`, as its JSON
  ``meta`` ``hold/`` + volume id u32 BE + id  a :class:`Hold` of the volume, as its JSON

Written as labels are (store/timeline.py): under the writer lock, first to a pack of
its own as a history record of kind ``HIST_SETTING`` (``{"policy": ...}``,
``{"hold": ...}``, ``{"release": ID}``), synced, then one LMDB transaction that puts
the record and lists the pack; when a writer session (``anytime protect``) holds the
lock, the request goes to it through the control socket (store/control.py) and it makes
the same write. ``check --repair`` replays the changes in the order they were made
(store/repair.py), so a rebuilt index keeps policies and holds.

A crash before the LMDB transaction leaves a leftover pack (deleted by the next
writer) and the setting as it was.
"""

from __future__ import annotations

import json
import secrets

from . import control, history, timeline
from .errors import UsageError
from .format import (
    DB_META,
    HOLD_PREFIX,
    POLICY_PREFIX,
    hold_key,
    policy_key,
    split_hold_key,
    vol_key,
)
from .retention import Hold, Plan, Policy, plan


def get_policy(repo, txn, vol: int) -> Policy | None:
    """The policy of volume ``vol``; None when it has none (everything is kept)."""
    v = txn.get(policy_key(vol), db=repo.dbs[DB_META])
    return None if v is None else Policy.from_json(bytes(v))


def list_holds(repo, txn, vol: int) -> list[Hold]:
    """Every hold of volume ``vol`` (in force or not), by id."""
    prefix = HOLD_PREFIX + vol_key(vol)
    cur = txn.cursor(db=repo.dbs[DB_META])
    out = []
    if cur.set_range(prefix):
        for key, val in cur:
            if not bytes(key).startswith(prefix):
                break
            out.append(Hold.from_json(bytes(val)))
    return out


def hold_of_label(repo, txn, vol: int, label: str, now_ns: int) -> Hold | None:
    """A hold in force that names ``label``, if any."""
    return next((h for h in list_holds(repo, txn, vol)
                 if h.label == label and h.active(now_ns)), None)


def new_hold_id(repo, txn, vol: int) -> str:
    """A hold id the volume does not use: ``h`` and six hex digits."""
    taken = {h.id for h in list_holds(repo, txn, vol)}
    while True:
        hid = "h" + secrets.token_hex(3)
        if hid not in taken:
            return hid


def plan_commits(repo, txn, vol: int) -> list[tuple[int, int | None]]:
    """The commits of volume ``vol`` as :func:`retention.plan` takes them: (instant,
    interior_from), oldest first; a timed commit's interior starts after its
    ``timed_from`` (put by a prune that dropped the commit before it), else after the
    previous commit (I15: its records are after it); an ordinary one has none."""
    out, prev = [], 0
    for t, rec in timeline.commits(repo, txn, vol):
        out.append((t, int(rec.get("timed_from", prev)) if rec.get("timed") else None))
        prev = t
    return out


def plan_volume(repo, txn, vol: int, now_ns: int, tz=None) -> Plan:
    """The retention plan of volume ``vol`` at ``now_ns``, from its commits, labels,
    holds and policy as ``txn`` sees them (store/retention.py decides)."""
    return plan(plan_commits(repo, txn, vol), dict(timeline.labels(repo, txn, vol)),
                list_holds(repo, txn, vol), get_policy(repo, txn, vol), now_ns, tz)


def _write(repo, vol: int, change: dict, apply) -> None:
    """Log ``change`` to a pack, then ``apply(txn)`` it with the pack listed."""
    packs = timeline.log_change(repo, lambda packw, at: history.append_setting(
        packw, vol, at, change))
    with repo.write_txn("writing a retention setting") as txn:
        timeline.list_packs(repo, txn, packs)
        apply(txn)


def set_policy(repo, vol: int, policy: Policy | None) -> bool:
    """Make ``policy`` volume ``vol``'s (None: remove it). Under the writer lock."""
    def write():
        d = None if policy is None else policy.to_dict()

        def apply(txn):
            if policy is None:
                txn.delete(policy_key(vol), db=repo.dbs[DB_META])
            else:
                txn.put(policy_key(vol), policy.to_json().encode(), db=repo.dbs[DB_META])
        _write(repo, vol, {"policy": d}, apply)
        return True

    return control.as_writer(repo, {"op": "set_policy", "vol": vol,
                                    "policy": None if policy is None else policy.to_dict()},
                             "done", write)


def add_hold(repo, vol: int, hold: Hold) -> bool:
    """Add ``hold`` to volume ``vol``; UsageError if the volume has a hold of its id, or
    the hold names a label that does not name its instant (moved meanwhile)."""
    def write():
        with repo.read_txn() as txn:
            if txn.get(hold_key(vol, hold.id), db=repo.dbs[DB_META]) is not None:
                raise UsageError(f"the volume already has a hold {hold.id}")
            if hold.label is not None and timeline.label_instant(
                    repo, txn, vol, hold.label) != hold.from_ns:
                raise UsageError(f"label '{hold.label}' does not name the instant the hold "
                                 f"was made for (it was moved or removed); hold it again")
        _write(repo, vol, {"hold": hold.to_dict()}, lambda txn: txn.put(
            hold_key(vol, hold.id), hold.to_json().encode(), db=repo.dbs[DB_META]))
        return True

    return control.as_writer(repo, {"op": "add_hold", "vol": vol, "hold": hold.to_dict()},
                             "done", write)


def release_hold(repo, vol: int, which: str) -> bool:
    """Release the hold of id ``which``, or else every hold naming the label ``which``;
    False if there is none."""
    def write():
        with repo.read_txn() as txn:
            holds = list_holds(repo, txn, vol)
        gone = [h for h in holds if h.id == which] or [h for h in holds if h.label == which]
        for h in gone:
            _write(repo, vol, {"release": h.id}, lambda txn, h=h: txn.delete(
                hold_key(vol, h.id), db=repo.dbs[DB_META]))
        return bool(gone)

    return control.as_writer(repo, {"op": "release_hold", "vol": vol, "which": which},
                             "released", write)


class Replay:
    """Setting changes replayed in order (``check --repair``): what the index of each
    volume should then hold."""

    def __init__(self):
        self.policies: dict[int, dict | None] = {}
        self.holds: dict[int, dict[str, dict]] = {}

    def apply(self, vol: int, change: dict) -> None:
        if "policy" in change:
            if change["policy"] is not None:
                Policy.from_dict(change["policy"])  # raises if damaged
            self.policies[vol] = change["policy"]
        if "hold" in change:
            h = Hold.from_dict(change["hold"])
            self.holds.setdefault(vol, {})[h.id] = change["hold"]
        if "release" in change:
            self.holds.get(vol, {}).pop(str(change["release"]), None)

    def records(self, vols) -> list[tuple[bytes, bytes]]:
        """(meta key, value) of every policy and hold of a volume in ``vols``."""
        out = []
        for vol, d in sorted(self.policies.items()):
            if d is not None and vol in vols:
                out.append((policy_key(vol), Policy.from_dict(d).to_json().encode()))
        for vol, holds in sorted(self.holds.items()):
            if vol in vols:
                out += [(hold_key(vol, hid), json.dumps(d, sort_keys=True).encode())
                        for hid, d in sorted(holds.items())]
        return out


def stored_settings(repo, txn) -> set[tuple[int, str]]:
    """(volume id, ``policy`` or ``hold:ID``) of every setting ``meta`` holds (for
    ``check``)."""
    out: set[tuple[int, str]] = set()
    cur = txn.cursor(db=repo.dbs[DB_META])
    for prefix in (POLICY_PREFIX, HOLD_PREFIX):
        if not cur.set_range(prefix):
            continue
        for key in cur.iternext(values=False):
            key = bytes(key)
            if not key.startswith(prefix):
                break
            if prefix == HOLD_PREFIX:
                vid, hid = split_hold_key(key)
                out.add((vid, f"hold:{hid}"))
            else:
                out.add((int.from_bytes(key[len(prefix):], "big"), "policy"))
    return out
