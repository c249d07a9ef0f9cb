"""Knobs of an open repository that are not part of its format.

A :class:`StoreOptions` is given to :meth:`Repository.open` / :meth:`Repository.init`
and kept as ``repo.options``; nothing in the store reads the environment. Each field
changes only how much the store holds at once, never what it writes means: tests set
them so that small data exercises code paths real data reaches (many packs, a staged
commit, a trained dictionary). The CLI takes them from environment variables, in one
place (tools/cmd_repo.py :func:`store_options`, docs/format.md "config").
"""

from __future__ import annotations

from collections import namedtuple

from .format import ZDICT_SAMPLE_BLOCKS

#: Index records per LMDB write transaction of a staged commit (store/writer.py): the
#: default of ``StoreOptions.stage_records``.
STAGE_RECORDS = 10_000


class StoreOptions(namedtuple("StoreOptions", ("pack_target", "stage_records",
                                               "zdict_sample_blocks"),
                              defaults=(None, STAGE_RECORDS, ZDICT_SAMPLE_BLOCKS))):
    """Immutable store knobs (a named tuple: ``dataclasses`` costs start-up time).

    ``pack_target``: bytes after which a pack is closed; None: the config's
    ``pack_target``, else ``DEFAULT_PACK_TARGET``.
    ``stage_records``: a commit of more index records than this is staged, in write
    transactions of this many records (``STAGE_RECORDS``).
    ``zdict_sample_blocks``: small blocks sampled to train the repository's zstd
    dictionary (``ZDICT_SAMPLE_BLOCKS``).
    """

    __slots__ = ()


DEFAULT_OPTIONS = StoreOptions()
