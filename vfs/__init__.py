"""anytime.vfs: a volume at an instant as a filesystem. Depends on anytime.store only.

Vocabulary:
  view         a volume at one instant (:class:`anytime.vfs.view.View`): stat, list,
               read, readlink, xattrs. Final once its instant is at or before the horizon.
  namespace    the time-travel tree of a mount without ``--at``: ``latest/``, any typed
               instant, ``labels/NAME/`` and ``versions/``.
  adapter      a thin translation of the core to a platform protocol (FUSE here).
"""
