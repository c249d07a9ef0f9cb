"""The layers point one way: tools -> vfs -> store <- capture.

``store`` imports no other part of anytime; ``vfs`` and ``capture`` import only
``store`` (and ``fusekit``, the FUSE plumbing both mount with, which imports nothing
of anytime either); ``tools`` may import them all. Checked by parsing every module's imports
(including imports inside functions), so no module has to be importable for the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: package -> the anytime packages it may import (besides itself)
ALLOWED = {
    "store": set(),
    "fusekit": set(),
    "vfs": {"store", "fusekit"},
    "capture": {"store", "fusekit"},
    "tools": {"store", "vfs", "capture", "fusekit"},
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def anytime_imports(path: Path, package: str) -> set[str]:
    """The anytime packages a module imports (relative imports resolved)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [f"anytime.{package}"]
            elif node.level >= 2:  # from .. import x: a sibling package
                mod = node.module or ""
                names = [f"anytime.{mod}" if mod else f"anytime.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
                if node.module == "anytime":
                    names = [f"anytime.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "anytime":
                found.add(parts[1] if len(parts) > 1 else "")
            elif parts[0] in ALLOWED:  # "import store" would bypass the package name
                found.add(parts[0])
    return found


def test_every_package_has_modules():
    for package in ALLOWED:
        assert modules(package), f"{package}/ has no modules"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_point_one_way(package):
    bad = []
    for path in modules(package):
        used = anytime_imports(path, package) - {package}
        wrong = used - ALLOWED[package]
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(wrong))}")
    assert not bad, (f"{package} may import only {sorted(ALLOWED[package]) or 'nothing'} "
                     f"of anytime:\n" + "\n".join(bad))


def test_the_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from anytime.vfs import view\n"
                   "from anytime import capture\nfrom ..tools import cli\n")
    assert anytime_imports(bad, "store") == {"vfs", "capture", "tools"}


def store_internals(path: Path) -> list[str]:
    """Uses of the store's LMDB handles (``.env``, ``.dbs``), database names (``DB_*``)
    or of ``lmdb`` itself (an import, an ``lmdb.`` name) in a module: what only the
    store may touch (it has one front door, and translates LMDB's errors itself)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (node.attr in ("env", "dbs")
                                                or node.attr.startswith("DB_")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and (node.id == "lmdb" or node.id.startswith("DB_")):
            found.append(f"{path.name}:{node.lineno}: {node.id}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] == "lmdb":
                found.append(f"{path.name}:{node.lineno}: from {node.module} import")
            elif (node.module or "").endswith("format"):
                found += [f"{path.name}:{node.lineno}: {a.name}" for a in node.names
                          if a.name.startswith("DB_")]
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "lmdb"]
    return found


@pytest.mark.parametrize("package", ["capture", "vfs", "tools"])
def test_only_the_store_touches_its_index(package):
    bad = [hit for path in modules(package) for hit in store_internals(path)]
    assert not bad, f"{package} reaches into the store's index; add a store method:\n" + \
        "\n".join(bad)


def test_the_index_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from anytime.store.format import DB_LABELS\n"
                   "def f(repo):\n    return repo.env.begin(), repo.dbs[DB_LABELS]\n")
    assert len(store_internals(bad)) == 4  # the import, .env, .dbs and the name
    lm = tmp_path / "lm.py"
    lm.write_text("import lmdb\nfrom lmdb import Error\nfrom anytime.store import format\n"
                  "def f(e):\n    return isinstance(e, lmdb.Error), format.DB_META\n")
    assert sorted(h.split(": ", 1)[1] for h in store_internals(lm)) == [
        ".DB_META", "from lmdb import", "import lmdb", "lmdb"]


#: Modules outside the store that may read the environment, and why. The store, capture
#: and vfs take what they need as arguments (the store's knobs: store/options.py).
READS_ENV = {"fusekit/mounting.py": "FUSE_LIBRARY_NAME, which mfusepy reads at import to "
                                    "pick libfuse 3"}


def environment_reads(path: Path) -> list[str]:
    """Reads of the environment in a module: ``os.environ``, ``os.getenv``."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    return [f"{path.name}:{node.lineno}: {node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv",
                                                                 "environb")]


@pytest.mark.parametrize("package", ["store", "fusekit", "capture", "vfs"])
def test_only_the_tools_read_the_environment(package):
    bad = [hit for path in modules(package) for hit in environment_reads(path)
           if str(path.relative_to(ROOT)) not in READS_ENV]
    assert not bad, (f"{package} reads the environment; take a parameter (test knobs: "
                     f"store/options.py, set by tools/cmd_repo.py):\n" + "\n".join(bad))


def test_the_environment_checker_sees_reads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nA = os.environ.get('X')\nB = os.getenv('Y')\n")
    assert len(environment_reads(bad)) == 2


#: The one module that knows where packs are and opens them (store/packstore.py).
PACK_STORE = ROOT / "store" / "packstore.py"
_PACK_NAMES = {"pack_path", "PACKS_DIR", "PACK_SUFFIX"}


def pack_file_access(path: Path) -> list[str]:
    """Ways a module could reach pack files without the pack store: a string naming the
    ``packs`` directory or a ``.pack`` file (docstrings aside), the names that build
    pack paths, or a local store's paths (``.path``, ``.top``)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    docstrings = {id(n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found = []
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings
                and (node.value.strip("/") == "packs" or "packs/" in node.value
                     or ".pack" in node.value)):
            found.append(f"{where}: {node.value!r}")
        elif isinstance(node, (ast.Name, ast.alias)) and (
                getattr(node, "id", None) or getattr(node, "name", None)) in _PACK_NAMES:
            found.append(f"{where}: {getattr(node, 'id', None) or node.name}")
        elif isinstance(node, ast.Attribute) and (
                node.attr in _PACK_NAMES or node.attr in ("path", "top")
                and any(w in ast.unparse(node.value) for w in ("pack_store",
                                                               "PackStore"))):
            found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_only_the_pack_store_touches_pack_files():
    bad = [hit for package in ALLOWED for path in modules(package) if path != PACK_STORE
           for hit in pack_file_access(path)]
    assert not bad, ("pack files are created, read and deleted only through "
                     "store/packstore.py (PackStore):\n" + "\n".join(bad))


def test_the_pack_file_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""packs/ in a docstring is fine."""\n'
                   'from .packstore import PACK_SUFFIX\n'
                   'def f(repo, root, pid):\n'
                   '    os.open(os.path.join(root, "packs", pid.hex() + ".pack"), 0)\n'
                   '    glob("packs/*/*")\n'
                   '    return pack_path(root, pid), repo.pack_store.path(pid)\n')
    assert len(pack_file_access(bad)) == 6
    assert pack_file_access(PACK_STORE), "the pack store itself does all of these"
