"""Every notebook executed, kept, and rendered to a static site a teacher can browse before class.

Each notebook runs through papermill, which sets the variables of its cell tagged ``parameters``
(``SOURCE``, ``DEVICE``), so the same notebooks run on another model source::

    python -m anatomy.lab.site --out site                         # the toy on the CPU (make html)
    python -m anatomy.lab.site --out gpu --source Qwen/Qwen2.5-VL-7B-Instruct --device cuda

writes ``<out>/executed/NN_name.ipynb`` (the executed copies), ``<out>/NN_name.html``, ``<out>/index.html``
and its thumbnails in ``<out>/thumbs``. A notebook that fails is still kept and rendered, with its error shown;
the command then lists the failures and exits with status 1.

The pages work offline: nothing is loaded over the network (``OFFLINE``, ``for_students``). Two cell tags
shape them: ``check`` on cells that only assert (``assertion_cells``), which nbval runs and the pages leave
out unless they fail, and ``key-figure`` on the cell whose figure the index shows (else the first figure).
"""

from __future__ import annotations

import argparse
import ast
import base64
import copy
import html
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class Page:
    """One executed notebook: its executed copy, its HTML page, and its error (None if it ran through)."""

    name: str
    executed: Path
    page: Path
    error: str | None = None


def notebooks(folder: Path = NOTEBOOKS, only: list[str] | None = None) -> list[Path]:
    """The notebooks of ``folder`` in order; ``only`` keeps those whose name starts with one of its prefixes."""
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    chosen = [path for path in found if not only or any(path.name.startswith(prefix) for prefix in only)]
    if not chosen:
        raise ValueError(f"no notebook in {folder} matches {only!r}; found {[path.name for path in found]}")
    return chosen


def execute(notebook: Path, out: Path, parameters: dict, timeout: int = 1800) -> tuple[Path, str | None]:
    """Run ``notebook`` with ``parameters`` into ``out/executed``; (executed copy, error message or None)."""
    import papermill

    executed = out / "executed" / notebook.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(notebook, executed, parameters=parameters, kernel_name="python3",
                                   cwd=notebook.parent, progress_bar=False, execution_timeout=timeout)
    except papermill.PapermillExecutionError as error:
        return executed, f"{error.ename}: {error.evalue}"
    return executed, None


# nbconvert's JupyterLab template, less everything it would fetch from a CDN: require.js and MathJax (the
# notebooks have no TeX: tests/lab/test_site.py), the widget manager and mermaid.js.
OFFLINE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock -%}
{%- block jupyter_widgets -%}{%- endblock -%}
{%- block html_head_js_mathjax -%}{%- endblock -%}
{%- block html_head_js_mermaidjs -%}{%- endblock -%}
"""
CHECK, KEY_FIGURE = "check", "key-figure"  # the cell tags the site reads
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def assertion_cells(notebook) -> list[int]:
    """The indices of ``notebook``'s code cells that only check, which the site hides (tag them ``check``).

    Such a cell has at least one ``assert``; every statement in it is an assert, an assignment, an import or
    an ``if``/``for`` block of those (nothing printed, displayed or left as the cell's value, no magic); and
    no name it binds is read by a later cell, so the page reads the same without it.

    >>> import nbformat
    >>> cells = [nbformat.v4.new_code_cell(s) for s in ["x = 1", "if x:\\n    assert x == 1", "y = 2\\nassert y", "y"]]
    >>> assertion_cells(nbformat.v4.new_notebook(cells=cells))
    [1]
    """
    trees = [_tree(cell) for cell in notebook.cells]
    checks = []
    for k, tree in enumerate(trees):
        if tree is None or not any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
            continue
        if _checks_only(tree.body) and not _bound(tree) & set().union(*map(_read, trees[k + 1:])):
            checks.append(k)
    return checks


def _tree(cell) -> ast.Module | None:
    """A code cell's syntax tree; None for markdown, magics and code that does not parse."""
    if cell.cell_type != "code" or any(line.lstrip().startswith(("%", "!")) for line in cell.source.splitlines()):
        return None
    try:
        return ast.parse(cell.source)
    except SyntaxError:
        return None


def _checks_only(body: list[ast.stmt]) -> bool:
    quiet = (ast.Assert, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom, ast.Pass)
    return all(isinstance(s, quiet) or isinstance(s, (ast.If, ast.For)) and _checks_only(s.body)
               and _checks_only(s.orelse) for s in body)


def _bound(tree: ast.Module) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names | {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}


def _read(tree: ast.Module | None) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} if tree is not None else set()


def for_students(notebook):
    """A copy of an executed ``notebook`` as the site shows it: cells tagged ``check`` left out unless they have
    an output (a failed check shows its error); no widget state or widget views, which need a kernel or a
    CDN: each live figure shows the PNG of its default choice (``anatomy.lab.widgets``)."""
    shown = copy.deepcopy(notebook)
    shown.metadata.pop("widgets", None)
    shown.cells = [c for c in shown.cells if CHECK not in c.metadata.get("tags", []) or c.get("outputs")]
    for cell in shown.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
    return shown


def to_html(executed: Path, out: Path) -> Path:
    """The executed notebook as one self-contained HTML page that loads nothing over the network."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE})])
    body, _ = exporter.from_notebook_node(for_students(nbformat.read(executed, as_version=4)))
    page = out / executed.with_suffix(".html").name
    page.write_text(body, encoding="utf-8")
    return page


def _first_sentence(markdown: str) -> str:
    """The first sentence of the first paragraph of prose (not a heading, list, table or bold label), unmarked."""
    for paragraph in re.split(r"\n\s*\n", markdown):
        if paragraph.strip() and not paragraph.lstrip().startswith(("#", "*", "-", "|", "`")):
            text = " ".join(paragraph.replace("*", "").replace("`", "").split())
            return re.split(r"(?<=[.!?])\s", text)[0]
    return ""


@dataclass
class Summary:
    """What the index shows of one executed notebook. ``figure``: the PNG of its key figure, or None."""

    title: str
    aim: str
    seconds: float | None
    figure: bytes | None


def summary(notebook) -> Summary:
    """Title (the first heading), aim (``metadata.anatomy.aim``, else the first sentence of the first paragraph
    of prose), run time (papermill's) and key figure (the first PNG of the cell tagged ``key-figure``, else the
    first PNG of the notebook) of an executed ``notebook``."""
    first = next((c.source for c in notebook.cells if c.cell_type == "markdown"), "")
    title = next((line.lstrip("# ").strip() for line in first.splitlines() if line.startswith("# ")), "")
    aim = notebook.metadata.get("anatomy", {}).get("aim") or _first_sentence(first)
    keyed = [c for c in notebook.cells if KEY_FIGURE in c.metadata.get("tags", [])]
    pngs = [o["data"]["image/png"] for c in keyed + notebook.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    seconds = notebook.metadata.get("papermill", {}).get("duration")
    return Summary(title, aim, seconds, base64.b64decode(pngs[0]) if pngs else None)


STYLE = """body {font: 15px/1.45 system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
color: #222} ol {list-style: none; padding: 0; display: grid; gap: 1rem;
grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr))} li {border: 1px solid #ccd; border-radius: 6px;
padding: 0.8rem} li img {width: 100%; height: 11rem; object-fit: contain; background: #fafafa} h2 {font-size: 1.05rem;
margin: 0.4rem 0} .meta {color: #666; font-size: 0.85rem} .failed {color: #b00; font-weight: bold}"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "run time not recorded"
    return f"ran in {seconds:.0f} s" if seconds < 60 else f"ran in {seconds // 60:.0f} min {seconds % 60:.0f} s"


def thumbnail(png: bytes, path: Path, box: tuple[int, int] = (480, 300)) -> Path:
    """``png`` shrunk to fit ``box`` (width, height) px, written to ``path``."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.thumbnail(box)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


TEACHING = (("docs/teaching.md", "the class plan: objectives, minutes, routes, glossary, discussion questions"),
            ("docs/real_weights.md", "real weights, for a teacher with a GPU: memory per size, commands"))


def for_teachers(out: Path, root: Path = NOTEBOOKS.parent) -> str:
    """A paragraph linking the teaching guides of the checkout at ``root`` (relative to ``out``); empty when
    the checkout has none (an installed package)."""
    links = [f'<a href="{html.escape(os.path.relpath(root / doc, out))}">{html.escape(Path(doc).name)}</a>: {about}'
             for doc, about in TEACHING if (root / doc).is_file()]
    return f"<p>For teachers: {'; '.join(links)}.</p>" if links else ""


def index(pages: list[Page], out: Path, parameters: dict) -> Path:
    """``out/index.html``: per notebook its key figure's thumbnail (in ``out/thumbs``), title, aim, run time and
    status, linked to its page and its executed copy; the parameters the notebooks ran with; and the teaching
    guides (``for_teachers``)."""
    import nbformat

    cards = []
    for p in pages:
        about = summary(nbformat.read(p.executed, as_version=4))
        link = html.escape(p.page.name)
        image = (f'<a href="{link}"><img src="thumbs/{html.escape(p.name)}.png" alt="key figure of {link}"></a>'
                 if about.figure else "")
        if about.figure:
            thumbnail(about.figure, out / "thumbs" / f"{p.name}.png")
        failed = f'<p class="failed">failed: {html.escape(p.error)}</p>' if p.error else ""
        cards.append(f'<li>{image}<h2><a href="{link}">{html.escape(about.title or p.name)}</a></h2>'
                     f"<p>{html.escape(about.aim)}</p>{failed}<p class=meta>{_duration(about.seconds)} · "
                     f'<a href="executed/{html.escape(p.executed.name)}">executed notebook</a></p></li>')
    ran = ", ".join(f"{k} = {v!r}" for k, v in parameters.items()) or "the notebooks' defaults"
    path = out / "index.html"
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>anatomy: Qwen2.5-VL, dissected</title>"
                    f"<style>{STYLE}</style><h1>anatomy: Qwen2.5-VL, dissected</h1>"
                    f"<p>Every notebook executed with {html.escape(ran)}; run times are this machine's.</p>"
                    f"{for_teachers(out)}"
                    f"<ol>\n" + "\n".join(cards) + "\n</ol>\n", encoding="utf-8")
    return path


def build(out: Path, source: str | None = None, device: str | None = None, folder: Path = NOTEBOOKS,
          only: list[str] | None = None) -> list[Page]:
    """Execute and render every chosen notebook into ``out``, then write the index."""
    chosen = notebooks(folder, only)  # fails before anything runs
    parameters = {k: v for k, v in (("SOURCE", source), ("DEVICE", device)) if v is not None}
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    for notebook in chosen:
        print(f"running {notebook.name} ...", flush=True)
        executed, error = execute(notebook, out, parameters)
        pages.append(Page(notebook.stem, executed, to_html(executed, out), error))
    index(pages, out, parameters)
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anatomy.lab.site", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("site"), help="folder for the site (default: site)")
    parser.add_argument("--source", help='the notebooks\' SOURCE: "toy", "tiny", a hub id or a directory')
    parser.add_argument("--device", help='the notebooks\' DEVICE, e.g. "cuda"')
    parser.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 03 07 (default: all)")
    args = parser.parse_args(argv)
    pages = build(args.out, args.source, args.device, only=args.only)
    failed = [p for p in pages if p.error]
    for page in failed:
        print(f"FAILED {page.name}: {page.error}", file=sys.stderr)
    print(f"{len(pages) - len(failed)} of {len(pages)} notebooks ran; open {args.out / 'index.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
