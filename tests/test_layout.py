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


def _offenders(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Each file's imports of a forbidden module (or of anything inside it)."""
    found = {}
    for path in paths:
        bad = sorted(n for n in _imports(path)
                     if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            found[path.name] = bad
    return found


def test_no_module_above_the_contract_imports_a_backend_or_its_driver() -> None:
    above = [p for p in sorted(PACKAGE.glob("*.py")) if p.name != "locator.py"]  # the factory
    assert _offenders(above, BACKEND_ONLY) == {}


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
    assert _offenders(sorted((PACKAGE / "backends").glob("*.py")), ABOVE_THE_CONTRACT) == {}


def test_redaction_is_a_leaf() -> None:
    """Everyone who prints a locator imports redaction; it imports nothing of queuectl."""
    assert not [n for n in _imports(PACKAGE / "redaction.py") if n.startswith("queuectl")]
