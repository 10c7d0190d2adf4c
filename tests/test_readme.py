"""The README cites tests for what it promises (`FILE.py::TEST`): each citation must name a test
that exists, so a renamed or deleted test turns this red instead of leaving a stale promise."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

# `test_x.py::test_y`, `tests/test_x.py::test_y`, `contract/test_x.py::test_y[sqlite]`,
# `test_x.py::TestClass::test_y`; a parametrized id counts as its function.
CITATION = re.compile(r"(?<![\w/.])((?:tests/)?(?:[\w-]+/)*test_\w+\.py)((?:::\w+)+)(?:\[[^\]\s`]*\])?")
# A whole file cited without a test: `test_x.py`.
FILE_ONLY = re.compile(r"(?<![\w/.])((?:tests/)?(?:[\w-]+/)*test_\w+\.py)(?!::|\w)")


def _test_file(cited: str) -> Path | None:
    """The file a citation means: relative to tests/ (or the repository, with `tests/`), or a
    bare name found anywhere under tests/ when exactly one file has it."""
    path = Path(cited.removeprefix("tests/"))
    if (TESTS / path).is_file():
        return TESTS / path
    if len(path.parts) == 1:
        found = [p for p in TESTS.rglob(path.name) if ".venv" not in p.parts]
        if len(found) == 1:
            return found[0]
    return None


def _defines(path: Path, names: list[str]) -> bool:
    """Whether `path` defines test `names[-1]`, inside the classes `names[:-1]`."""
    scope: list[ast.stmt] = ast.parse(path.read_text(), str(path)).body
    for i, name in enumerate(names):
        last = i == len(names) - 1
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if last else (ast.ClassDef,)
        found = [node for node in scope if isinstance(node, kinds) and node.name == name]
        if not found:
            return False
        if not last:
            scope = found[0].body  # type: ignore[union-attr]
    return True


def stale_citations(text: str) -> list[str]:
    """Every citation in `text` whose file or test does not exist, saying which."""
    stale = []
    for match in CITATION.finditer(text):
        cited, names = match.group(1), match.group(2).split("::")[1:]
        path = _test_file(cited)
        if path is None:
            stale.append(f"{match.group(0)}: no file {cited} under tests/")
        elif not _defines(path, names):
            stale.append(f"{match.group(0)}: {path.relative_to(ROOT)} has no test {'::'.join(names)}")
    for match in FILE_ONLY.finditer(text):
        if _test_file(match.group(1)) is None:
            stale.append(f"{match.group(1)}: no such file under tests/")
    return stale


def test_every_test_the_readme_cites_exists() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(CITATION.findall(text)) >= 40, "the README's test citations were not found"
    stale = stale_citations(text)
    assert not stale, "README.md cites tests that do not exist:\n" + "\n".join(stale)


def test_a_stale_citation_is_named() -> None:
    """The check itself can fail: missing files and functions are reported, real ones are not."""
    text = ("(`test_readme.py::test_every_test_the_readme_cites_exists`, "
            "`tests/test_readme.py::test_a_stale_citation_is_named[x]`, "
            "`contract/test_queues.py::no_such_test`, `test_gone.py::test_x`, "
            "`tests/contract/test_claiming.py`, `test_missing.py`)")
    assert stale_citations(text) == [
        "contract/test_queues.py::no_such_test: tests/contract/test_queues.py has no test"
        " no_such_test",
        "test_gone.py::test_x: no file test_gone.py under tests/",
        "test_missing.py: no such file under tests/",
    ]
