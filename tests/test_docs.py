"""The teaching guides cannot go stale in silence.

``docs/real_weights.md`` quotes, per released size, memory and time for a 1080 x 1920 picture: every row is
recomputed here from the skeletons (a direct parameter count) and the package's own estimators
(``anatomy.causal.plan.plan``, ``anatomy.dissect.job_bytes``) and must appear in the guide character for
character. Its list of notebooks with a ``SOURCE`` parameter is read from the notebooks' ``parameters``
cells. ``docs/teaching.md`` must plan every notebook of ``notebooks/``, and its reading times must follow
the notebooks' word counts at the rate it states.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import anatomy
from anatomy.causal import Contrast, pair
from anatomy.causal.plan import QUESTION, countable, duration, plan, size_text
from anatomy.causal.sweeps import DEFAULT_BUDGET_GIB
from anatomy.dissect import job_bytes
from anatomy.inputs import DEFAULT_MAX_PIXELS, REFERENCE_QUESTION, demo_image, encode, fit_pixels
from anatomy.model import PUBLISHED_SIZES, block_kinds, unwrap

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:image of .* scaled to:UserWarning")]  # the cap, on purpose

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TEACHING = ROOT / "docs" / "teaching.md"
REAL_WEIGHTS = ROOT / "docs" / "real_weights.md"
PICTURE = (1080, 1920)  # height x width
GPU = "H100"


def contrast(spec, max_pixels: int | None) -> Contrast:
    """The guide's pair: ``plan``'s example pair (a demo picture, a box blacked out) at 1080 x 1920 px."""
    clean = np.array(demo_image(*PICTURE))
    corrupted = clean.copy()
    corrupted[PICTURE[0] // 4 : PICTURE[0] // 2, PICTURE[1] // 4 : PICTURE[1] // 2] = 0
    return Contrast([pair(spec, clean, QUESTION, corrupted_image=corrupted, max_pixels=max_pixels)])


def within_budget(spec, pairs: Contrast, sweep: str) -> tuple[object, int | None]:
    """The plan of ``sweep`` as the command runs it: with the default budget, or, when that refuses the job, with
    the smallest whole ``--budget-gib`` that lets it run (returned too; None when the default does)."""
    planned = plan(spec, pairs, sweep=sweep, device=GPU)
    if not planned.refusal:
        return planned, None
    budget = math.ceil(planned.least_budget_gib)
    return plan(spec, pairs, sweep=sweep, device=GPU, budget_gib=budget), budget


def rows(size: str) -> list[str]:
    """The guide's rows for ``size``: GPU (bf16) with the default pixel cap, CPU (float32) for dissect, the
    patching sweep without the cap, and the notebooks (one bf16 copy; 07's two; 03's float32 on the CPU)."""
    spec = countable(anatomy.load(size))
    count = sum(p.numel() for p in unwrap(spec).parameters())
    capped = contrast(spec, DEFAULT_MAX_PIXELS)
    patching, default = within_budget(spec, capped, "patching")
    assert default is None, f"the {size}'s patch sweep is over the default budget: the guide says it is not"
    approx, budget = within_budget(spec, capped, "attribution")
    gpu = (f"| {size} | {count:,} | {size_text(2 * count)} | {size_text(patching.peak_bytes)} | "
           f"{duration(patching.seconds)} | {size_text(approx.peak_bytes)} | {budget} |")  # fmt: skip
    picture, _ = fit_pixels(demo_image(*PICTURE), DEFAULT_MAX_PIXELS)
    prompt = encode(spec, picture, REFERENCE_QUESTION, max_pixels=None)
    held = job_bytes(spec.config, prompt, block_kinds(spec.config.vision_config).index("full"))
    cpu = (f"| {size} | {size_text(4 * count)} | {' + '.join(size_text(b) for b in held.values())} | "
           f"{size_text(4 * count + sum(held.values()))} |")  # fmt: skip
    whole, budget = within_budget(spec, contrast(spec, None), "patching")
    budget = f"{DEFAULT_BUDGET_GIB:g} (the default)" if budget is None else budget
    uncapped = f"| {size} | {budget} | {size_text(whole.peak_bytes)} | {duration(whole.seconds)} |"
    notebooks = f"| {size} | {size_text(2 * count)} | {size_text(4 * count)} | {size_text(4 * count)} |"
    return [gpu, cpu, uncapped, notebooks]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("size", PUBLISHED_SIZES)
def test_real_weights_numbers_are_the_packages(size):
    text = REAL_WEIGHTS.read_text()
    for row in rows(size):
        assert row in text, f"docs/real_weights.md lacks this row, recomputed from the package:\n{row}"


def test_real_weights_pictures_are_the_packages():
    """The sizes the guide says the 1080 x 1920 picture becomes, with and without the cap."""
    spec = countable(anatomy.load("7B"))
    text = " ".join(REAL_WEIGHTS.read_text().split())
    for max_pixels in (DEFAULT_MAX_PIXELS, None):
        (_, rows_, cols), = encode(spec, demo_image(*PICTURE), "?", max_pixels=max_pixels).grid_thw.tolist()
        said = f"{rows_ * 14} x {cols * 14} px ({rows_ * cols // 4:,} image tokens)"
        assert said in text, said


def parameters_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(next(c["source"] for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])))


@pytest.mark.parametrize("name", ["SOURCE", "DEVICE"])
def test_real_weights_lists_the_notebooks_with_each_parameter(name):
    """The guide's lines of notebooks that take ``SOURCE`` and ``DEVICE`` are what their ``parameters`` cells say."""
    line = next(line for line in REAL_WEIGHTS.read_text().splitlines() if line.startswith(f"Notebooks with `{name}`:"))
    listed = set(re.findall(r"`(\d\d)`", line))
    have = {nb.name[:2] for nb in NOTEBOOKS if re.search(rf"^{name}\s*=", parameters_cell(nb), re.M)}
    assert listed == have, f"the guide lists {sorted(listed)} with {name}; the parameters cells: {sorted(have)}"


def teaching_rows() -> dict[str, list[str]]:
    """docs/teaching.md's timing table: notebook number -> its cells."""
    found = {}
    for line in TEACHING.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and re.fullmatch(r"`\d\d`", cells[0]):
            found[cells[0].strip("`")] = cells
    return found


def test_teaching_plan_has_every_notebook():
    planned = teaching_rows()
    text = TEACHING.read_text()
    for notebook in NOTEBOOKS:
        assert notebook.name[:2] in planned, f"{notebook.name} has no row in docs/teaching.md's timing table"
        assert notebook.stem in text, f"docs/teaching.md never names {notebook.stem}"


def words(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum(len("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")


def test_teaching_reading_minutes_follow_the_word_counts():
    """Reading minutes = markdown words / the stated rate, rounded up; 25% of drift allowed before the plan must
    be updated (the notebooks' prose is still being edited)."""
    rate = int(re.search(r"at (\d+) words a minute", TEACHING.read_text()).group(1))
    planned = teaching_rows()
    for notebook in NOTEBOOKS:
        said = int(planned[notebook.name[:2]][2])
        now = math.ceil(words(notebook) / rate)
        assert abs(said - now) <= max(1, 0.25 * now), f"{notebook.name}: the plan says {said} min of reading, " \
                                                       f"its {words(notebook)} words take {now} at {rate}/min"


def test_teaching_sums_add_up():
    """In class = 1.5 x reading, rounded up, + exercises; a session's minutes are its notebooks' sum."""
    planned = teaching_rows()
    for number, (_, _, read, _, exercises, in_class) in planned.items():
        assert int(in_class) == math.ceil(1.5 * int(read)) + int(exercises), f"notebook {number}'s row"
    for line in TEACHING.read_text().splitlines():
        if re.match(r"\| \d\. ", line):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            numbers = re.findall(r"`(\d\d)`", cells[1])
            assert int(cells[2]) == sum(int(planned[n][5]) for n in numbers), f"session {cells[0]!r}"
