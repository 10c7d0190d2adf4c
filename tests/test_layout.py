"""The storage contract stays closed: only the factory reaches a backend or a driver."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "queuectl"
BACKEND_ONLY = ("sqlite3", "psycopg2", "psycopg", "queuectl.backends")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_above_the_contract_imports_a_backend_or_its_driver() -> None:
    offenders = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "locator.py":  # the one factory
            continue
        bad = sorted(n for n in _imports(path)
                     if any(n == b or n.startswith(b + ".") for b in BACKEND_ONLY))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_the_factory_imports_backends_only_lazily() -> None:
    """Top-level imports of locator.py name no backend: SQLite's enqueue never loads a
    PostgreSQL driver, and the reverse."""
    tree = ast.parse((PACKAGE / "locator.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {getattr(n, "module", None) or n.names[0].name for n in top}
    assert not any(str(n).startswith(("queuectl.backends", "sqlite3", "psycopg")) for n in names)


ABOVE_THE_CONTRACT = ("queuectl.locator", "queuectl.cli", "queuectl.worker", "queuectl.main")


def test_no_backend_reaches_up_to_the_factory_the_cli_or_the_worker() -> None:
    """The reverse rule: a backend depends on the contract and the leaves below it, never on
    what chooses or drives it, so the module graph has no cycle through a backend."""
    offenders = {}
    for path in sorted((PACKAGE / "backends").glob("*.py")):
        bad = sorted(n for n in _imports(path)
                     if any(n == a or n.startswith(a + ".") for a in ABOVE_THE_CONTRACT))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_redaction_is_a_leaf() -> None:
    """Everyone who prints a locator imports redaction; it imports nothing of queuectl."""
    assert not [n for n in _imports(PACKAGE / "redaction.py") if n.startswith("queuectl")]
