"""anytime.tools: what people run. The ``anytime`` command lives in :mod:`anytime.tools.cli`.

Depends on vfs, capture and store; nothing depends on it.
"""
