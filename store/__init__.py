"""anytime.store: the repository. Imports no other part of anytime.

Vocabulary:
  repository  a directory with ``config``, ``packs/`` and the LMDB ``index/``.
  volume      a protected tree (or image) with its own timeline; it has an id and a name.
  instant     nanoseconds since the Unix epoch (UTC), an unsigned 64-bit integer.
  commit      an atomic group of changes to one volume, made visible by one LMDB
              transaction; it carries one instant. A volume's commits are in time order.
  horizon     the instant of a volume's newest commit; views at or before it are final.
  entry       one version of one path (kind, metadata, file id); a deletion is an entry
              of kind ``KIND_DELETED``.
  file id     a volume's inode number: hardlinked paths share it, and file contents are
              versioned per file id.
  dir hash    the keyed 16-byte hash of a directory's path under which the index files
              the directory's entries (``format.DirHasher``), so index keys do not grow
              with the path; the ``dirs`` database maps it back to the path.
  block       a fixed-size piece of a file's content (the volume's block size), named by
              its keyed BLAKE3 hash (the block id). All-zero blocks are holes
              (``HOLE_ID``) and are not stored.
  pack        an append-only file of self-describing block records.
  pack store  where packs are kept: every pack byte is written and read through one
              :class:`~anytime.store.packstore.PackStore` (its contract: durability,
              torn tails, errors); the local directory ``packs/`` by default.
  view        the state of a volume after every commit at or before an instant.
  policy      what history of a volume to keep (tiers, max age, capacity cap, per-path
              rules) and hold: instants kept whatever the policy; defined in
              :mod:`anytime.store.retention`, stored by :mod:`anytime.store.policies`.

Contracts: readers never block the writer (LMDB MVCC); one writer at a time (writer
lock); pack bytes are durable before the index references them. Errors users meet
are classes in :mod:`anytime.store.errors`.
"""
