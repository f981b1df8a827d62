"""The static site (make html): pages that load nothing over the network, checks hidden from students, the index.

One small notebook is executed and rendered through the site's own path (papermill, then the exporter); the
page is parsed and every resource it would load is listed. `make html` itself is not run here.
"""

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from anatomy.lab import site

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
NO_FIGURE = {"02"}  # draws no figure: its index entry has no thumbnail


class Loads(HTMLParser):
    """Every URL a page would fetch: src/srcset/data/poster of any element, href of <link>, url() and @import
    in <style> and style attributes, and URLs in <script> text (an import() or a loader's address)."""

    def __init__(self):
        super().__init__()
        self.urls, self.tag = [], None

    def handle_starttag(self, tag, attrs):
        self.tag = tag
        for name, value in attrs:
            if value and (name in ("src", "srcset", "data", "poster") or (tag == "link" and name == "href")):
                self.urls.append(value)
            if name == "style" and value:
                self.urls += _css_urls(value)

    def handle_data(self, data):
        if self.tag == "style":
            self.urls += _css_urls(data)
        elif self.tag == "script":
            self.urls += re.findall(r"""(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s"'`)]*""", data)


def _css_urls(css: str) -> list[str]:
    return re.findall(r"url\(\s*['\"]?([^'\")]+)", css) + re.findall(r"@import\s+['\"]([^'\"]+)", css)


def remote(page: str) -> list[str]:
    """The URLs of ``page`` that go over the network (http, https or protocol-relative)."""
    loads = Loads()
    loads.feed(page)
    return [url for url in loads.urls if re.match(r"(https?:)?//", url.strip())]


def small_notebook(tmp_path: Path) -> Path:
    """A notebook with what the course's pages hold: a Mermaid block, a live figure (widgets), a plain figure
    tagged key-figure, a cell tagged check."""
    cells = [
        nbformat.v4.new_markdown_cell("# 99 · A small page\n\nIt has a diagram.\n\n```mermaid\nflowchart TD\n"
                                      "    a --> b\n```"),
        nbformat.v4.new_code_cell("from matplotlib.figure import Figure\nfrom anatomy.lab import widgets\n\n"
                                  "def draw(n):\n    figure = Figure(figsize=(2, 1))\n"
                                  "    figure.subplots().plot(range((n or 0) + 2))  # n is None for the 'mean' choice\n"
                                  "    return figure\n\n"
                                  "widgets.dropdowns(draw, {'n': [('one', 1), ('two', 2)]})"),
        nbformat.v4.new_code_cell("draw(3)", metadata={"tags": [site.KEY_FIGURE]}),
        nbformat.v4.new_code_cell("assert draw(1) is not None", metadata={"tags": [site.CHECK]}),
    ]
    path = tmp_path / "99_small.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(executed notebook, its page's HTML) of the small notebook, through the site's own execute and to_html."""
    out = tmp_path_factory.mktemp("site")
    executed, error = site.execute(small_notebook(out), out, {}, timeout=240)
    assert error is None, error
    return nbformat.read(executed, as_version=4), site.to_html(executed, out).read_text()


@pytest.mark.timeout(600)
def test_a_rendered_page_loads_nothing_over_the_network(rendered, tmp_path):
    executed, page = rendered
    assert remote(page) == []
    # the same notebook through nbconvert's stock template: the remote loads the site's template removes
    from nbconvert import HTMLExporter

    stock, _ = HTMLExporter(template_name="lab").from_notebook_node(executed)
    hosts = " ".join(remote(stock))
    assert all(name in hosts for name in ("require", "mathjax", "mermaid")), hosts


@pytest.mark.timeout(600)
def test_a_page_shows_live_figures_as_pictures_and_hides_checks(rendered):
    executed, page = rendered
    outputs = [o for cell in executed.cells for o in cell.get("outputs", [])]
    assert any(site.WIDGET_VIEW in o.get("data", {}) for o in outputs)  # the live panel was there...
    assert site.WIDGET_VIEW not in page and "widget-state" not in page  # ...the page needs no widget manager
    assert page.count("data:image/png;base64,") >= 2  # the live figure's PNG and the key figure
    text = re.sub(r"<[^>]+>", "", page)  # code is highlighted token by token
    assert "assert draw(1)" not in text and "draw(3)" in text
    assert "flowchart TD" in text  # the Mermaid source shows as text where no script draws it


def test_a_failed_check_stays_on_the_page():
    passed = nbformat.v4.new_code_cell("assert x", metadata={"tags": [site.CHECK]})
    failed = nbformat.v4.new_code_cell("assert y", metadata={"tags": [site.CHECK]}, outputs=[
        nbformat.v4.new_output("error", ename="AssertionError", evalue="", traceback=[])])
    shown = site.for_students(nbformat.v4.new_notebook(cells=[passed, failed]))
    assert [c.source for c in shown.cells] == ["assert y"]


@pytest.mark.parametrize("source, checks", [
    ("assert x == 1", True),
    ('if SOURCE == "toy":  # a comment\n    assert x == 1, x', True),
    ("for k in (1, 2):\n    assert k", True),
    ("from math import pi\nhalf = pi / 2\nassert half < 2", True),
    ("y = x + 1\nassert y", False),  # y is read by the next cell
    ('print(x)\nassert x', False),
    ("assert x\nx", False),  # the cell shows a value
    ("%time assert x", False),
    ("z = 1", False),  # no assert
])
def test_assertion_cells_are_the_quiet_ones(source, checks):
    cells = [nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell("print(y)")]
    assert site.assertion_cells(nbformat.v4.new_notebook(cells=cells)) == ([0] if checks else [])


def course() -> dict[str, nbformat.NotebookNode]:
    return {path.name[:2]: nbformat.read(path, as_version=4) for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))}


def tagged(notebook, tag: str) -> list[int]:
    return [k for k, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("number", sorted(course()))
def test_every_assertion_cell_is_tagged_check_and_only_those(number):
    notebook = course()[number]
    assert tagged(notebook, site.CHECK) == site.assertion_cells(notebook)


@pytest.mark.parametrize("number", sorted(course()))
def test_each_notebook_marks_one_key_figure_and_no_ignored_output(number):
    notebook = course()[number]
    keys = [] if number in NO_FIGURE else ["code"]
    assert [notebook.cells[k].cell_type for k in tagged(notebook, site.KEY_FIGURE)] == keys
    assert not [k for k, cell in enumerate(notebook.cells) if "NBVAL_IGNORE_OUTPUT" in cell.source]


def test_no_notebook_needs_mathjax():
    """The site loads no MathJax: no markdown cell may hold TeX ($...$, \\(...\\), \\[...\\])."""
    tex = {(number, k) for number, notebook in course().items() for k, cell in enumerate(notebook.cells)
           if cell.cell_type == "markdown" and re.search(r"\$|\\\(|\\\[", cell.source)}
    assert tex == set()


def _png(colour: str, size=(60, 40)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _executed(path: Path, key: int | None, seconds: float | None, aim: str | None) -> Path:
    figures = [nbformat.v4.new_code_cell(f"figure {k}", metadata={"tags": [site.KEY_FIGURE]} if k == key else {},
                                         outputs=[nbformat.v4.new_output("display_data", data={"image/png": _png(c)})])
               for k, c in enumerate(["blue", "red"])]
    cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} · Title\n\n**You will learn**\n\n- a\n\nFirst *aim*. "
                                           "More.\n"), nbformat.v4.new_code_cell("x = 1"), *figures]
    metadata = {"papermill": {"duration": seconds}} if seconds is not None else {}
    if aim:
        metadata["anatomy"] = {"aim": aim}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=metadata), path)
    return path


def test_the_index_shows_title_aim_run_time_and_key_figure(tmp_path):
    (tmp_path / "executed").mkdir()
    pages = [site.Page(name, _executed(tmp_path / "executed" / f"{name}.ipynb", key, seconds, aim),
                       tmp_path / f"{name}.html", error)
             for name, key, seconds, aim, error in [("01_keyed", 1, 65.2, "The aim.", None),
                                                    ("02_untagged", None, 7.0, None, "ValueError: x")]]
    page = site.index(pages, tmp_path, {"SOURCE": "tiny"}).read_text()
    assert remote(page) == []
    for text in ["01_keyed · Title", "The aim.", "ran in 1 min 5 s", "02_untagged · Title", "First aim.",
                 "ran in 7 s", "failed: ValueError: x", "SOURCE = &#x27;tiny&#x27;", 'href="01_keyed.html"',
                 'href="executed/02_untagged.ipynb"']:
        assert text in page, text
    # the keyed notebook shows its tagged figure (red), the untagged one its first figure (blue)
    colours = {name: Image.open(tmp_path / "thumbs" / f"{name}.png").convert("RGB").getpixel((5, 5))
               for name in ("01_keyed", "02_untagged")}
    assert colours == {"01_keyed": (255, 0, 0), "02_untagged": (0, 0, 255)}


def test_the_index_links_the_teaching_guides_that_exist(tmp_path):
    (tmp_path / "repo" / "docs").mkdir(parents=True)
    (tmp_path / "repo" / "docs" / "teaching.md").write_text("# plan")
    links = site.for_teachers(tmp_path / "repo" / "site", tmp_path / "repo")
    assert 'href="../docs/teaching.md"' in links and "real_weights" not in links
    assert site.for_teachers(tmp_path / "site", tmp_path / "nothing") == ""
    assert "docs/real_weights.md" in site.for_teachers(site.NOTEBOOKS.parent / "site")  # this checkout has both


def test_a_thumbnail_fits_its_box(tmp_path):
    path = site.thumbnail(base64.b64decode(_png("green", size=(1200, 300))), tmp_path / "t.png", box=(480, 300))
    assert Image.open(path).size == (480, 120)


def test_no_figure_no_thumbnail(tmp_path):
    path = tmp_path / "executed" / "03_plain.ipynb"
    path.parent.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 03 · Plain\n\nNo figure.")]), path)
    page = site.index([site.Page("03_plain", path, tmp_path / "03_plain.html")], tmp_path, {}).read_text()
    assert "<img" not in page and "run time not recorded" in page and "No figure." in page
    assert not (tmp_path / "thumbs").exists()
