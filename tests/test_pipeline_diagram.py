"""The pipeline diagram (README and notebook 00): one Mermaid block, drawn by notebook 00 and the site from the
package's copy; every site it names resolves, every notebook it names exists."""

import json
import re
from pathlib import Path

import pytest

from anatomy.capture.sites import site_table
from anatomy.lab import diagram

ROOT = Path(__file__).parent.parent


def diagrams() -> dict[str, str]:
    """The Mermaid block of the README and of notebook 00's markdown cells."""
    cells = json.loads((ROOT / "notebooks" / "00_serving_and_chat_api.ipynb").read_text())["cells"]
    notebook = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    found = {name: re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
             for name, text in (("README.md", (ROOT / "README.md").read_text()), ("notebook 00", notebook))}
    assert all(len(blocks) == 1 for blocks in found.values()), {name: len(b) for name, b in found.items()}
    return {name: blocks[0] for name, blocks in found.items()}


def test_the_readme_and_notebook_00_show_the_same_diagram_the_package_draws():
    readme, notebook = diagrams().values()
    assert readme == notebook == diagram.PIPELINE


def test_notebook_00_draws_the_diagram():
    cells = json.loads((ROOT / "notebooks" / "00_serving_and_chat_api.ipynb").read_text())["cells"]
    assert any("diagram.draw(diagram.PIPELINE)" in "".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("where", ["README.md", "notebook 00"])
def test_every_site_in_the_diagram_resolves_on_the_model(tiny, where):
    diagram = diagrams()[where]
    named = {n for group in re.findall(r"sites?: ([^\"]+)\"", diagram) for n in group.split(", ")}
    assert len(named) >= 8
    table = site_table(tiny.model)
    assert sorted(n for n in named if n.replace(".N.", ".0.") not in table) == []


def test_every_notebook_in_the_diagram_exists():
    named = set(re.findall(r"\b(\d\d) [a-z]", diagrams()["README.md"]))
    existing = {path.name[:2] for path in (ROOT / "notebooks").glob("*.ipynb")}
    planned = {"08", "09"}  # issue 12 and issue 14, drawn dotted until they land
    assert named - planned <= existing and {"00", "02", "03", "04", "05", "06", "07", "10"} <= named
