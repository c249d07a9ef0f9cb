"""Who may read what: the access check of the original tree, on captured metadata.

A **caller** is the identity a request is made with: user id, group id and the
supplementary groups (:class:`Caller`). A **mask** is what it asks for: ``R`` (read a
file, list a directory), ``X`` (execute a file, search a directory), ``W`` (never granted
by a read-only view, but checked like the others).

:func:`permits` decides as Linux does for a local filesystem (``generic_permission``
with POSIX ACLs):

* uid 0 may read and search anything, and execute a file only if some ``x`` bit of its
  mode is set (the capabilities root has by default; a uid 0 caller without them is
  still taken as root);
* the owner gets the owner bits;
* with an access ACL (``system.posix_acl_access``) and group bits in the mode, POSIX.1e:
  a named user entry (masked), else the owning group and named groups the caller is in
  (masked: the first entry that grants the whole mask without the mask is the one the
  mask is applied to; if entries match and none grants, refused), else others;
* without one, the group bits if the caller is in the file's group, else the other bits.

The ACL is the captured xattr value in Linux's binary form (``posix_acl_xattr``): u32
version 2, then entries of u16 tag, u16 perm, u32 id, little-endian. A default ACL
(``system.posix_acl_default``) decides only what files created in a directory get; a
read-only view creates nothing, so it never enters a check.

This module only decides; it reads nothing. The FUSE adapter uses it where the kernel
cannot see the metadata that decides (``versions/``: the directories of the version's
instant), and a web page can use it to show a person only what their uid and groups
could read in the original tree at that instant (through
:meth:`anytime.vfs.namespace.Namespace.may`).
"""

from __future__ import annotations

import functools
import stat as st
import struct
from dataclasses import dataclass

R, W, X = 4, 2, 1
ACL_XATTR = b"system.posix_acl_access"
DEFAULT_ACL_XATTR = b"system.posix_acl_default"
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity of a request: ``uid``, ``gid`` and supplementary ``groups``."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


@functools.lru_cache(maxsize=4096)
def parse_acl(value: bytes) -> tuple[tuple[int, int, int], ...] | None:
    """The (tag, perm, id) entries of an ACL xattr value; None if it is not one (a
    malformed value is treated as no ACL, as the mode bits then still hold)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        return None
    if _HEADER.unpack_from(value)[0] != ACL_VERSION:
        return None
    return tuple(_ENTRY.iter_unpack(value[_HEADER.size:]))


def permits(caller: Caller, mode: int, uid: int, gid: int, acl: bytes | None,
            mask: int) -> bool:
    """Whether ``caller`` may do ``mask`` (R|W|X bits) on an inode of ``mode`` (with its
    type bits), owned by ``uid``/``gid``, with access ACL xattr value ``acl`` (or None)."""
    if caller.root:
        return not (mask & X) or st.S_ISDIR(mode) or bool(mode & 0o111)
    if caller.uid == uid:
        return mask & ~(mode >> 6) & 7 == 0
    if acl is not None and mode & 0o070:
        entries = parse_acl(acl)
        if entries is not None:
            return _acl_permits(caller, gid, entries, mask)
    bits = mode >> 3 if caller.in_group(gid) else mode
    return mask & ~bits & 7 == 0


def _acl_permits(caller: Caller, gid: int, entries, mask: int) -> bool:
    """POSIX.1e over ``entries``, in the order Linux's posix_acl_permission uses (the
    owner was decided by the mode bits already: ACL_USER_OBJ mirrors them)."""
    masked = None
    for tag, perm, _eid in entries:
        if tag == ACL_MASK:
            masked = perm
    found = False
    for tag, perm, eid in entries:
        if tag == ACL_USER and eid == caller.uid:
            return _masked(perm, masked, mask)
        if tag in (ACL_GROUP_OBJ, ACL_GROUP):
            group = gid if tag == ACL_GROUP_OBJ else eid
            if caller.in_group(group):
                found = True
                if mask & ~perm & 7 == 0:
                    return _masked(perm, masked, mask)
    if found:
        return False
    for tag, perm, _eid in entries:
        if tag == ACL_OTHER:
            return mask & ~perm & 7 == 0
    return False


def _masked(perm: int, masked: int | None, mask: int) -> bool:
    if masked is not None:
        perm &= masked
    return mask & ~perm & 7 == 0
