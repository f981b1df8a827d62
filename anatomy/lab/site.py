"""Every notebook executed, kept, and rendered to a static site a teacher can browse before class.

Each notebook runs through papermill, which sets the variables of its cell tagged ``parameters``
(``SOURCE``, ``DEVICE``), so the same notebooks run on another model source::

    python -m anatomy.lab.site --out site                         # the toy on the CPU (make html)
    python -m anatomy.lab.site --out gpu --source Qwen/Qwen2.5-VL-7B-Instruct --device cuda

writes ``<out>/executed/NN_name.ipynb`` (the executed copies), ``<out>/NN_name.html`` and
``<out>/index.html``. A notebook that fails is still kept and rendered, with its error shown;
the command then lists the failures and exits with status 1.
"""

from __future__ import annotations

import argparse
import html
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


def to_html(executed: Path, out: Path) -> Path:
    """The executed notebook as one self-contained HTML page (JupyterLab's look, figures inlined)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    page = out / executed.with_suffix(".html").name
    page.write_text(body, encoding="utf-8")
    return page


def index(pages: list[Page], out: Path, parameters: dict) -> Path:
    """``out/index.html``: a link per notebook, its status, and the parameters it ran with."""
    items = "\n".join(
        f'<li><a href="{html.escape(p.page.name)}">{html.escape(p.name)}</a>'
        f'{" (failed: " + html.escape(p.error) + ")" if p.error else ""}'
        f' · <a href="executed/{html.escape(p.executed.name)}">notebook</a></li>' for p in pages)
    ran = ", ".join(f"{k} = {v!r}" for k, v in parameters.items()) or "the notebooks' defaults"
    path = out / "index.html"
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>anatomy notebooks</title>"
                    f"<h1>anatomy: Qwen2.5-VL, dissected</h1><p>Executed with {html.escape(ran)}.</p>"
                    f"<ol>\n{items}\n</ol>\n", encoding="utf-8")
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
