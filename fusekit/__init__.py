"""anytime.fusekit: FUSE plumbing shared by the mount (vfs) and the shim (capture);
imports no other part of anytime (tests/test_layers.py)."""
