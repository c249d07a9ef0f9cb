"""History records: what the index holds, written to packs too, so that the index can
be rebuilt from the packs alone (store/repair.py, ``anytime check --repair``).

Terms:
  history record  a pack record with ``HISTORY_MAGIC`` instead of a chunk's magic,
                  the same header (its 32-byte id is ``HISTORY_ID``: kind, volume id,
                  instant, part) and checksum. A chunk is never read from one.
  batch           up to ``STAGE_RECORDS`` index records of one commit (path versions,
                  block versions, inode mappings), with keys exactly as the index holds
                  them (the commit's instant included), zstd-compressed.
  commit record   the last history record of a commit: the commit's JSON record, the
                  volume record after it, the number of batches, the label it set and
                  the current dictionary. A commit is in the history only when its
                  commit record and every one of its batches are in the packs.
  label change    a label set or removed outside a commit (``mark``, ``unmark``).
  setting change  a volume's retention policy set or cleared, a hold added or released
                  (store/policies.py): ``{"policy": {...} or null}``, ``{"hold": {...}}``
                  or ``{"release": ID}``.
  dictionary      a zstd dictionary small chunks are compressed with, written before
                  the first chunk compressed with it.

Every history record is appended to a pack before the LMDB transaction that puts the
same records in the index, and the packs are synced before that transaction commits
(the one commit point), so the packs always hold at least what the index holds.
"""

from __future__ import annotations

import json

from .format import (
    CODEC_RAW,
    CODEC_ZSTD,
    HIST_BATCH,
    HIST_COMMIT,
    HIST_LABEL,
    HIST_PRUNE,
    HIST_SETTING,
    HIST_ZDICT,
    HISTORY_ID,
    HISTORY_MAGIC,
    NO_NONCE,
    decode_history_items,
    encode_history_items,
)


def history_id(kind: int, vol: int = 0, instant: int = 0, part: int = 0,
               nonce: bytes = NO_NONCE) -> bytes:
    return HISTORY_ID.pack(kind, vol, instant, part, nonce)


def split_history_id(rid: bytes) -> tuple[int, int, int, int, bytes]:
    """(kind, volume id, instant, part, commit nonce) of a history record's id."""
    return HISTORY_ID.unpack(rid)


def _zstd():
    import zstandard

    return zstandard


def append_batch(packw, vol: int, instant: int, nonce: bytes, part: int, items) -> None:
    """Append batch ``part`` of commit (``vol``, ``instant``, ``nonce``): ``items`` are
    (database code of ``HIST_DBS``, key, value)."""
    raw = encode_history_items(items)
    stored = _zstd().ZstdCompressor(level=3, write_content_size=False).compress(raw)
    packw.append(history_id(HIST_BATCH, vol, instant, part, nonce), CODEC_ZSTD, len(raw), stored,
                 magic=HISTORY_MAGIC)


def append_commit(packw, vol: int, instant: int, nonce: bytes, commit: dict, volume: dict,
                  batches: int, label: str | None, zdict: int | None) -> None:
    """Append the commit record of commit (``vol``, ``instant``), after its batches."""
    raw = json.dumps({"commit": commit, "volume": volume, "batches": batches,
                      "label": label, "zdict": zdict}, sort_keys=True).encode()
    packw.append(history_id(HIST_COMMIT, vol, instant, 0, nonce), CODEC_RAW, len(raw), raw,
                 magic=HISTORY_MAGIC)


def append_label(packw, vol: int, at: int, name: str, instant: int | None) -> None:
    """Append a label change made at ``at``: ``name`` now names ``instant`` (None: the
    label was removed)."""
    raw = json.dumps({"label": name, "instant": instant}, sort_keys=True).encode()
    packw.append(history_id(HIST_LABEL, vol, at), CODEC_RAW, len(raw), raw,
                 magic=HISTORY_MAGIC)


def append_setting(packw, vol: int, at: int, change: dict) -> None:
    """Append a setting change of volume ``vol`` made at ``at`` (see the docstring)."""
    raw = json.dumps(change, sort_keys=True).encode()
    packw.append(history_id(HIST_SETTING, vol, at), CODEC_RAW, len(raw), raw,
                 magic=HISTORY_MAGIC)


def append_zdict(packw, dict_id: int, packed: bytes) -> None:
    """Append dictionary ``dict_id`` as the index keeps it (zstd-compressed)."""
    packw.append(history_id(HIST_ZDICT, part=dict_id), CODEC_RAW, len(packed), packed,
                 magic=HISTORY_MAGIC)


def append_prune(packw, vol: int, at: int, dropped: list[int]) -> None:
    """Append the tombstone of a prune made at ``at``: the commits of ``vol`` it dropped
    (a rebuild leaves them out even while their records are still in packs)."""
    raw = json.dumps({"dropped": dropped}).encode()
    stored = _zstd().ZstdCompressor(level=3, write_content_size=False).compress(raw)
    packw.append(history_id(HIST_PRUNE, vol, at), CODEC_ZSTD, len(raw), stored,
                 magic=HISTORY_MAGIC)


def decode_payload(codec: int, raw_len: int, stored: bytes) -> bytes:
    """The plaintext of a history record; ValueError if it does not decompress to its
    length."""
    if codec == CODEC_RAW:
        data = bytes(stored)
    elif codec == CODEC_ZSTD:
        try:
            data = _zstd().ZstdDecompressor().decompress(stored, max_output_size=raw_len)
        except _zstd().ZstdError as e:
            raise ValueError(f"does not decompress: {e}") from None
    else:
        raise ValueError(f"has unknown codec {codec}")
    if len(data) != raw_len:
        raise ValueError("has the wrong length")
    return data


def decode_batch(data: bytes) -> list[tuple[int, bytes, bytes]]:
    return decode_history_items(data)


def decode_json(data: bytes) -> dict:
    return json.loads(data)
