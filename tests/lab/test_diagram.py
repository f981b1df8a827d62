"""Mermaid flowcharts drawn with matplotlib: the parse against a direct reading of the text, a layout where
boxes never overlap and every edge points down, one clear error per unsupported line."""

import re

import pytest

from anatomy.lab import diagram


def test_the_parse_matches_a_direct_reading_of_the_pipeline():
    chart = diagram.parse(diagram.PIPELINE)
    defined = re.findall(r'(\w+)\["([^"]*)"\]', diagram.PIPELINE)
    assert {name: "<br/>".join(lines) for name, lines in chart.labels.items()} == {
        name: label for name, label in defined if name != "model"}
    arrows = re.findall(r"^\s*(\w+)(?:\[\"[^\"]*\"\])? (-->|-\.->) (\w+)", diagram.PIPELINE, flags=re.M)
    assert chart.edges == [(a, b, arrow == "-.->") for a, arrow, b in arrows]
    inside = diagram.PIPELINE.split("subgraph")[1].split("\n    end")[0]
    first_inside = [n for n, _ in re.findall(r'(\w+)\["([^"]*)"\]', inside) if n != "model"]
    assert chart.groups == {"model": ("the model: every module and parameter in 01 structure and parameters",
                                      first_inside)}


def _overlap(a, b) -> bool:
    (xa, ya, wa, ha), (xb, yb, wb, hb) = a, b
    return abs(xa - xb) < (wa + wb) / 2 and abs(ya - yb) < (ha + hb) / 2


def test_the_layout_overlaps_nothing_and_points_every_edge_down():
    chart = diagram.parse(diagram.PIPELINE)
    place = diagram.layout(chart)
    names = list(place)
    assert [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if _overlap(place[a], place[b])] == []
    for a, b, _ in chart.edges:
        assert place[a][1] + place[a][3] / 2 < place[b][1] - place[b][3] / 2, (a, b)
    members = chart.groups["model"][1]
    x, y, w, h = diagram._frame([place[n] for n in members], title=True)
    outside = [n for n in names if n not in members]
    assert [n for n in outside if _overlap(place[n], (x, y, w, h))] == []  # e.g. "text", defined before it


def test_the_figure_shows_every_label_and_the_group_title():
    figure = diagram.draw(diagram.PIPELINE)
    shown = {t.get_text() for t in figure.axes[0].texts}
    chart = diagram.parse(diagram.PIPELINE)
    assert shown == {"\n".join(lines) for lines in chart.labels.values()} | {chart.groups["model"][0]}
    assert len(figure.axes[0].patches) == len(chart.labels) + len(chart.edges) + len(chart.groups)


@pytest.mark.parametrize("text, message", [
    ("flowchart LR\n  a --> b", "'flowchart LR'; expected 'flowchart TD'"),
    ("", "expected 'flowchart TD'"),
    ("flowchart TD\n  a ==> b", "line 2: 'a ==> b'"),
    ("flowchart TD\n  a --> b\n  b --> a", "form a cycle"),
    ('flowchart TD\n  subgraph g["G"]\n  a --> b', "subgraph 'g' has no end"),
    ('flowchart TD\n  subgraph g\n  subgraph h\n  end\n  end', "line 3: 'subgraph h': a subgraph inside"),
    ('flowchart TD\n  a["A"]\n  a["B"]', "node 'a' is labelled twice"),
])
def test_an_unsupported_flowchart_is_one_clear_error(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        diagram.layout(diagram.parse(text))
