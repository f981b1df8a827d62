"""The package's import graph, read from the source with ast: lessons stand on the floor, no import circles.

The floor is what every lesson may use: ``model``, ``kernels``, ``processor``, ``inputs``, ``capture/`` and ``lab/``.
The lessons (``overview/``, ``vision/``, ``decoder/``) import the floor only, never each other, except the
pairs listed in ``WITHIN_A_STAGE`` (a lesson built on another one of its own stage). Everything else
(``sources``, ``toy/``, ``causal/``, ``serving/``, ``dissect``, ``__main__``, ``processes``, ``browser``, ``hub``) sits on
top. ``causal/`` works on any specimen: it imports nothing of the toy, which is one adapter over it.
"""

import ast
from pathlib import Path

import pytest

import anatomy

ROOT = Path(anatomy.__file__).parent
FLOOR_MODULES = {"anatomy.model", "anatomy.kernels", "anatomy.processor", "anatomy.inputs"}
FLOOR_PACKAGES = ("anatomy.capture", "anatomy.lab")
LESSON_PACKAGES = ("anatomy.overview", "anatomy.vision", "anatomy.decoder")
WITHIN_A_STAGE = {
    "anatomy.decoder.generation": {"anatomy.decoder.attention"},  # generation traces attention rows
    "anatomy.vision.attention": {"anatomy.vision.windows"},  # the patch picker outlines the patch's window
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of this package it imports}``, imports inside functions included."""
    files = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_floor(name: str) -> bool:
    return name in FLOOR_MODULES or name.startswith(FLOOR_PACKAGES)


def is_lesson(name: str) -> bool:
    return name.startswith(LESSON_PACKAGES)


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_the_imports_it_should(graph):
    assert "anatomy.capture.hooks" in graph["anatomy.decoder.logit_lens"]  # a module-level import
    assert "anatomy.toy.cli" in graph["anatomy.toy"]  # the package's own __init__
    assert "anatomy.dissect" in graph["anatomy.__main__"]  # an import inside a function
    assert {"anatomy.model", "anatomy.capture.orders", "anatomy.capture.budget"} <= graph["anatomy.vision.attention"]
    assert len(graph) == len(list(ROOT.rglob("*.py")))


def test_the_package_has_no_import_cycle(graph):
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle(graph):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    circled = {name: set(targets) for name, targets in graph.items()}
    circled["anatomy.model"].add("anatomy.sources")  # the circle the old sources.py and toy/ made
    assert find_cycle(circled) is not None


def test_the_floor_imports_only_the_floor(graph):
    wrong = {name: sorted(t for t in targets if not is_floor(t)) for name, targets in graph.items() if is_floor(name)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_lessons_import_only_the_floor(graph):
    wrong = {
        name: sorted(t for t in targets if not is_floor(t) and t not in WITHIN_A_STAGE.get(name, set()))
        for name, targets in graph.items()
        if is_lesson(name)
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_every_stage_has_its_folder():
    stages = {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()}
    assert {"capture", "overview", "vision", "decoder", "lab", "toy", "serving"} <= stages
    flat = sorted(path.stem for path in ROOT.glob("*.py"))
    assert flat == ["__init__", "__main__", "browser", "dissect", "hub", "inputs", "kernels", "model", "processes",
                    "processor", "sources"]


def toy_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """``{module of anatomy.causal: the toy modules it imports}``, for the modules that import any."""
    found = {name: sorted(t for t in targets if t.startswith("anatomy.toy"))
             for name, targets in graph.items() if name.startswith("anatomy.causal")}  # fmt: skip
    return {name: targets for name, targets in found.items() if targets}


def test_causal_imports_nothing_from_the_toy(graph):
    assert toy_imports(graph) == {}


def test_the_toy_check_finds_a_toy_import(graph):
    planted = {name: set(targets) for name, targets in graph.items()}
    planted["anatomy.causal.sweeps"].add("anatomy.toy.task")
    assert toy_imports(planted) == {"anatomy.causal.sweeps": ["anatomy.toy.task"]}
    assert "anatomy.causal.sweeps" in graph["anatomy.toy.experiments.patching"]  # the toy's adapter is seen importing
