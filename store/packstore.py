"""Pack storage: every byte of every pack is created, appended, sealed, read, listed
and deleted through one :class:`PackStore`, and nowhere else.

A pack store holds opaque byte strings named by 16-byte pack ids. What the bytes mean
(the pack header, records, checksums, codecs) is :mod:`anytime.store.packs`' business;
a store never looks inside. Implementations: :class:`LocalDirPackStore` (the
repository's ``packs/XX/ID.pack`` files) and :class:`MemoryPackStore` (tests);
``store/faulty.py`` wraps either to inject faults. Object storage (a pack uploaded
whole when sealed, ranges read with GET Range) is meant to be one more implementation,
and encryption a wrapper.

The contract every implementation keeps (``tests/test_packstore.py`` checks it):

Writing. ``create(pack_id)`` starts a new pack and returns a *handle*; it raises
``FileExistsError`` if the store already holds that id. ``append(handle, data)`` adds
bytes at the end. ``seal(handle)`` ends the pack: from its return the pack's bytes are
durable and readable, and the handle is spent. ``sync(pack_ids)`` makes sealed packs
durably *listed* (the local store: fsync of their directories); a pack is durable,
bytes and name, once both have returned, and only then may the index reference it.
A store may keep appended bytes anywhere until ``seal`` (the local store writes them to
the pack file as they come; an object store would buffer them and upload the whole
pack when sealed, making ``sync`` a no-op), so nothing is promised about an unsealed
pack: reading it is undefined, and a crash leaves it absent or holding any prefix of
what was appended (a *torn tail*), which ``packs.iter_records`` stops at.
``discard(handle)`` gives up an unsealed pack and deletes what it holds.

Open packs. A store whose ``can_flush`` is True also keeps packs *open* across commits
(continuous capture commits many times a second, and a pack per commit would make
hundreds of thousands of files a day): ``flush(handle)`` makes every byte appended so
far durable and readable, and the pack stays open for more appends; its name is made
durable by ``sync`` as a sealed pack's. The index may then reference the flushed prefix.
``truncate(pack_id, size)`` cuts a pack back to its first ``size`` bytes, durably: the
next writer does so to a pack left open by a writer that died, whose bytes past what
the index lists belong to no commit. A store that cannot flush (an object store, whose
objects are written whole) has ``can_flush`` False; its writers seal a pack at every
commit instead.

A failed ``create``, ``append``, ``seal`` or ``sync`` raises
:class:`~anytime.store.errors.RepositoryFull` when the store has no room (the local
store: ENOSPC or EDQUOT; the message names the filesystem, exit 18) and
:class:`~anytime.store.errors.RepositoryIOError` otherwise (exit 1); never an
``OSError``, so capture cannot take it for a source file it failed to read. After a
failed ``append`` or ``seal`` the pack may hold part of the data: the handle may only be
discarded.

Reading. ``read(pack_id, offset, length)`` returns the bytes of a sealed pack at
``[offset, offset + length)``, fewer where the pack ends sooner (an empty result past
its end): a short read is the caller's to judge (a pack cut short), not an error.
``size(pack_id)`` is the pack's length. Both raise
:class:`~anytime.store.errors.PackMissing` (exit 16) when the store has no such pack and
``RepositoryIOError`` when it cannot be read.

Listing and deleting. ``list()`` yields the id of every pack created and not deleted,
in no order; it may include unsealed packs (the local store does; an object store
would list only sealed ones). ``delete(pack_id)`` removes a pack, sealed or not; a
missing pack is not an error (idempotent). A delete is not durable by itself: after a
crash the pack may be back, and the next writer deletes it again.

Thread-safety: ``read``, ``size``, ``list`` and ``delete`` may be called from any
thread at any time; each handle is used by one thread at a time (the pack writer holds
its lock), and different handles may be written concurrently. ``close()`` releases
what the store caches (descriptors); a closed store may be used again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator

from . import modes, space
from .errors import AnytimeError, PackMissing, RepositoryFull, RepositoryIOError

#: The top directory of the local store, inside the repository.
PACKS_DIR = "packs"
PACK_SUFFIX = ".pack"


class PackStore:
    """The interface (see the module doc for the contract). ``root``: the directory
    whose filesystem a full store's error names (None: not on a filesystem); ``where``:
    how messages name the store."""

    root: str | None = None
    where: str = "the pack store"
    #: whether :meth:`flush` and :meth:`truncate` are supported (open packs)
    can_flush: bool = False

    def init(self) -> None:
        """Prepare a new, empty store (a new repository)."""

    def create(self, pack_id: bytes):
        raise NotImplementedError

    def append(self, handle, data) -> None:
        raise NotImplementedError

    def seal(self, handle) -> None:
        raise NotImplementedError

    def sync(self, pack_ids: Iterable[bytes]) -> None:
        raise NotImplementedError

    def flush(self, handle) -> None:
        raise NotImplementedError(f"{self.where} cannot keep packs open")

    def truncate(self, pack_id: bytes, size: int) -> None:
        raise NotImplementedError(f"{self.where} cannot keep packs open")

    def discard(self, handle) -> None:
        raise NotImplementedError

    def read(self, pack_id: bytes, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def will_read(self, pack_id: bytes, offset: int, length: int) -> None:
        """A hint: these bytes will be read soon, so the store may start fetching them.
        Never fails; the default does nothing."""

    def size(self, pack_id: bytes) -> int:
        raise NotImplementedError

    def list(self) -> Iterator[bytes]:
        raise NotImplementedError

    def delete(self, pack_id: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # --- the errors of the contract, for implementations -----------------------------
    def full_error(self, what: str) -> RepositoryFull:
        """The error of a store with no room left, while doing ``what``."""
        if self.root is None:
            return RepositoryFull(f"{self.where} is full, and {what} failed. Nothing of "
                                  f"this run was committed")
        return space.full_error(self.root, what)

    def write_error(self, err: OSError, what: str, pack_id: bytes | None = None
                    ) -> AnytimeError:
        """What a write that failed with ``err`` raises: a full store, or an I/O error."""
        if space.is_full(err, self.root or ""):
            return self.full_error(what)
        pack = f" (pack {pack_id.hex()})" if pack_id else ""
        return RepositoryIOError(
            f"{what}{pack} in {self.where} failed: {err.strerror or err}. Nothing of this "
            f"run was committed; the disk holding the repository may be failing: see the "
            f"system log, and run 'anytime check' once it is fixed")

    def missing(self, pack_id: bytes) -> PackMissing:
        return PackMissing(f"pack {pack_id.hex()} is missing from the repository")

    def read_error(self, err: OSError, pack_id: bytes) -> RepositoryIOError:
        return RepositoryIOError(
            f"reading pack {pack_id.hex()} in {self.where} failed: {err.strerror or err}; "
            f"the disk holding the repository may be failing: see the system log")


class _LocalPack:
    """A pack being written by :class:`LocalDirPackStore`."""

    __slots__ = ("pack_id", "fd")

    def __init__(self, pack_id: bytes, fd: int):
        self.pack_id, self.fd = pack_id, fd


class LocalDirPackStore(PackStore):
    """Packs as files ``packs/XX/ID.pack`` under a repository root (XX: the first two
    hex digits of the id), ``FILE_MODE`` files in ``DIR_MODE`` directories.

    Appends are written at once (the pack writer batches them into large writes);
    ``seal`` fsyncs the file, ``flush`` fdatasyncs it; ``sync`` fsyncs each pack's
    directory and ``packs/`` once, however many packs share them. Reads use
    ``os.pread`` on descriptors kept open (one per pack read): they see an open pack's
    bytes as they are appended."""

    can_flush = True

    def __init__(self, root: str):
        self.root = root
        self.where = root
        self.top = os.path.join(root, PACKS_DIR)
        self._fds: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def path(self, pack_id: bytes) -> str:
        h = pack_id.hex()
        return os.path.join(self.top, h[:2], h + PACK_SUFFIX)

    def init(self) -> None:
        modes.private_dir(self.top)

    def create(self, pack_id: bytes) -> _LocalPack:
        path = self.path(pack_id)
        try:
            modes.make_dir(os.path.dirname(path))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         modes.FILE_MODE)
        except FileExistsError:
            raise
        except OSError as e:
            raise self.write_error(e, "writing a pack") from None
        return _LocalPack(pack_id, fd)

    def append(self, handle: _LocalPack, data) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(handle.fd, view):]
        except OSError as e:
            raise self.write_error(e, "writing a pack") from None

    def seal(self, handle: _LocalPack) -> None:
        try:
            os.fsync(handle.fd)
        except OSError as e:
            raise self.write_error(e, "writing a pack") from None
        finally:  # the handle is spent either way
            os.close(handle.fd)
            handle.fd = -1

    def flush(self, handle: _LocalPack) -> None:
        try:
            os.fdatasync(handle.fd)  # the data and the size that reaches it
        except OSError as e:
            raise self.write_error(e, "writing a pack") from None

    def truncate(self, pack_id: bytes, size: int) -> None:
        try:
            fd = os.open(self.path(pack_id), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self.missing(pack_id) from None
        except OSError as e:
            raise self.write_error(e, "cutting an open pack back", pack_id) from None
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as e:
            raise self.write_error(e, "cutting an open pack back", pack_id) from None
        finally:
            os.close(fd)

    def sync(self, pack_ids: Iterable[bytes]) -> None:
        dirs = {os.path.dirname(self.path(p)) for p in pack_ids}
        if not dirs:
            return  # no new name to make durable
        try:
            for d in sorted(dirs) + [self.top]:  # the subdirectories' entries in packs/
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            raise self.write_error(e, "making packs durable") from None

    def discard(self, handle: _LocalPack) -> None:
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1
        self.delete(handle.pack_id)

    def _fd(self, pack_id: bytes) -> int:
        fd = self._fds.get(pack_id)
        if fd is None:
            with self._lock:
                fd = self._fds.get(pack_id)
                if fd is None:
                    try:
                        fd = os.open(self.path(pack_id), os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        raise self.missing(pack_id) from None
                    except OSError as e:
                        raise self.read_error(e, pack_id) from None
                    self._fds[pack_id] = fd
        return fd

    def read(self, pack_id: bytes, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd(pack_id), length, offset)
        except OSError as e:
            raise self.read_error(e, pack_id) from None

    def will_read(self, pack_id: bytes, offset: int, length: int) -> None:
        # the kernel starts reading them now, without waiting: packs are read out of
        # order (a pack holds chunks as the writer's threads finished them), which its
        # own readahead does not follow
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._fd(pack_id), offset, length, os.POSIX_FADV_WILLNEED)
            except (OSError, AnytimeError):
                pass

    def size(self, pack_id: bytes) -> int:
        try:
            return os.stat(self.path(pack_id)).st_size
        except FileNotFoundError:
            raise self.missing(pack_id) from None
        except OSError as e:
            raise self.read_error(e, pack_id) from None

    def list(self) -> Iterator[bytes]:
        """Every ``packs/XX/ID.pack`` whose name is a pack id with its first two digits
        as ``XX``; other names are not packs and are left alone."""
        try:
            subs = sorted(os.listdir(self.top))
        except FileNotFoundError:
            return
        for sub in subs:
            try:
                names = os.listdir(os.path.join(self.top, sub))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                h = name.removesuffix(PACK_SUFFIX)
                if len(h) != 32 or h == name or h[:2] != sub:
                    continue
                try:
                    yield bytes.fromhex(h)
                except ValueError:
                    continue

    def delete(self, pack_id: bytes) -> None:
        with self._lock:
            fd = self._fds.pop(pack_id, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path(pack_id))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class _MemoryPack:
    __slots__ = ("pack_id", "data", "open")

    def __init__(self, pack_id: bytes):
        self.pack_id, self.data, self.open = pack_id, bytearray(), True


class MemoryPackStore(PackStore):
    """Packs held in this process's memory: for tests (a repository whose packs vanish
    with the process). Never full, never fails."""

    where = "the in-memory pack store"
    can_flush = True

    def __init__(self):
        self._packs: dict[bytes, _MemoryPack] = {}
        self._lock = threading.Lock()

    def create(self, pack_id: bytes) -> _MemoryPack:
        with self._lock:
            if pack_id in self._packs:
                raise FileExistsError(f"pack {pack_id.hex()} exists")
            p = self._packs[pack_id] = _MemoryPack(pack_id)
        return p

    def append(self, handle: _MemoryPack, data) -> None:
        if not handle.open:
            raise ValueError("append to a sealed pack")
        handle.data += data

    def seal(self, handle: _MemoryPack) -> None:
        handle.open = False

    def sync(self, pack_ids: Iterable[bytes]) -> None:
        pass

    def flush(self, handle: _MemoryPack) -> None:
        if not handle.open:
            raise ValueError("flush of a sealed pack")

    def truncate(self, pack_id: bytes, size: int) -> None:
        del self._pack(pack_id).data[size:]

    def discard(self, handle: _MemoryPack) -> None:
        handle.open = False
        self.delete(handle.pack_id)

    def _pack(self, pack_id: bytes) -> _MemoryPack:
        p = self._packs.get(pack_id)
        if p is None:
            raise self.missing(pack_id)
        return p

    def read(self, pack_id: bytes, offset: int, length: int) -> bytes:
        return bytes(self._pack(pack_id).data[offset:offset + length])

    def size(self, pack_id: bytes) -> int:
        return len(self._pack(pack_id).data)

    def list(self) -> Iterator[bytes]:
        with self._lock:
            ids = list(self._packs)
        yield from ids

    def delete(self, pack_id: bytes) -> None:
        with self._lock:
            self._packs.pop(pack_id, None)
