"""Tables that print as aligned text and render as HTML in a notebook."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape


@dataclass
class Table:
    """Rows that print as aligned text and render as an HTML table in a notebook.

    Integers print with thousands separators and align right.

    >>> print(Table(["part", "parameters"], [["qkv", 4920320]]))
    part  parameters
    ----  ----------
    qkv    4,920,320
    """

    columns: list[str]
    rows: list[list]
    title: str = ""
    notes: tuple[str, ...] = ()

    def cells(self) -> list[list[str]]:
        return [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in self.rows]

    def __str__(self) -> str:
        cells = self.cells()
        widths = [max(len(c) for c in column) for column in zip(self.columns, *cells)]
        lines = [self.columns, ["-" * w for w in widths], *cells]
        body = ["  ".join(_pad(c, w) for c, w in zip(line, widths)).rstrip() for line in lines]
        return "\n".join(([self.title] if self.title else []) + body + list(self.notes))

    __repr__ = __str__  # a notebook's text view shows the table, not the fields

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{escape(c)}</th>" for c in self.columns)
        body = "".join(_html_row(row) for row in self.cells())
        caption = f"<caption style='text-align:left'><b>{escape(self.title)}</b></caption>" if self.title else ""
        notes = "".join(f"<p><i>{escape(n)}</i></p>" for n in self.notes)
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _html_row(cells: list[str]) -> str:
    """One ``<tr>``: numbers align right, and only the last cell (a note) may wrap."""
    wraps = ["nowrap"] * (len(cells) - 1) + ["normal"]
    tds = (f"<td style='text-align:{_align(c)};white-space:{w}'>{escape(c)}</td>" for c, w in zip(cells, wraps))
    return f"<tr>{''.join(tds)}</tr>"


_NUMBER = re.compile(r"^-?[\d.,]+( ?%| GiB)?$")


def _align(cell: str) -> str:
    """Numbers (``"1,280"``, ``"0.5"``, ``"17.8%"``, ``"15.45 GiB"``) align right, text left."""
    return "right" if _NUMBER.match(cell) else "left"


def _pad(cell: str, width: int) -> str:
    return cell.rjust(width) if _align(cell) == "right" else cell.ljust(width)
