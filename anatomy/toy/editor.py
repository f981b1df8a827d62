"""The counterfactual editor of notebook 11: edit one object of a toy picture, watch the answer, patch it back.

>>> live = editor(spec, example.sample)      # controls: the object's colour (or "erased"), the cell it moves to
>>> live                                     # in a notebook: the edited picture and the answer words' probabilities
>>> now = live.edit                          # the current choice, an ``Edit``
>>> back = patch_back(spec, now)             # every residual site x (each cell, the edited cells together)
>>> back.restored                            # (sites,) how much of the answer patching the edited cells back restores

``probabilities`` reads the answer words' softmax probabilities (over the whole vocabulary) after the
toy's prompt, in one forward pass: what ``anatomy.causal.probability`` measures, for several words at once.

``patch_back`` is activation patching of the pair (clean picture, edited picture), clean -> edited: the
edited picture runs, and at one residual site one cell group takes the clean run's activation. Its metric
is the logit difference between the likeliest answer word on each side; an effect of 1 means the clean
answer is fully back. The groups are every cell alone and, when the edit changed several cells (a move),
those cells together.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from anatomy.causal import CellEffects, Contrast, Groups, cell_groups, logit_diff, pair, patching_sweep
from anatomy.inputs import encode, request_messages
from anatomy.lab.widgets import LiveFigure
from anatomy.model import unwrap
from anatomy.processor import token_texts
from anatomy.toy.edit import Cell, changed_cells, erase, free_cells, free_colours, move, recolour, thing_at
from anatomy.toy.shapes import CELL
from anatomy.toy.task import ANSWERS, Sample, Scene

ERASED = "erased"  # the colour control's value that removes the object


@dataclass(frozen=True)
class Edit:
    """One object of ``sample``'s scene (in ``cell``) recoloured to ``colour`` or ``ERASED``, and moved to ``to``."""

    sample: Sample
    cell: Cell
    colour: str
    to: Cell

    @property
    def edited(self) -> Scene:
        scene = self.sample.scene
        if self.colour == ERASED:
            return erase(scene, self.cell)
        return move(recolour(scene, self.cell, self.colour), self.cell, self.to)

    @property
    def changed(self) -> list[Cell]:
        """The cells whose pixels the edit changed, from the pixels."""
        return changed_cells(self.sample.scene, self.edited)

    def __str__(self) -> str:
        thing = self.sample.scene.things[thing_at(self.sample.scene, self.cell)]
        name = f"the {thing.colour} {thing.shape} in {self.cell}"
        if self.colour == ERASED:
            return f"{name} erased"
        done = [f"recoloured {self.colour}"] * (self.colour != thing.colour) + [f"moved to {self.to}"] * (
            tuple(self.to) != tuple(self.cell))
        return f"{name} " + (" and ".join(done) or "as drawn")


def answer_words(sample: Sample) -> tuple[str, ...]:
    """The toy's answers to questions of ``sample``'s kind: its colours, left/right/top/bottom, or 1-3."""
    return ANSWERS[sample.kind]


def word_ids(spec, words) -> list[int]:
    """Each word's token id, as the model says it right after the prompt; refuses a word of several tokens."""
    ids = []
    for word in words:
        tokens = spec.processor.tokenizer(word, add_special_tokens=False).input_ids if isinstance(word, str) else []
        if len(tokens) != 1:
            raise ValueError(f"answer word {word!r} is {len(tokens)} tokens "
                             f"{token_texts(spec.processor.tokenizer, tokens)}; expected one token")  # fmt: skip
        ids.append(tokens[0])
    return ids


def probabilities(spec, picture, question: str, words) -> np.ndarray:
    """``(words,)``: each word's probability as the next token after the toy's prompt (no system message) on
    ``picture`` (what ``encode`` takes); one forward pass."""
    ids = word_ids(spec, words)
    prompt = encode(spec, messages=request_messages(picture, question, system=None))
    with torch.no_grad():
        logits = unwrap(spec)(**prompt, logits_to_keep=1).logits[0, -1]  # (vocab,)
    return logits.float().softmax(-1)[ids].cpu().numpy()


def editor_figure(edit: Edit, clean: np.ndarray, edited: np.ndarray) -> Figure:
    """The edited picture (edited cells dashed) beside the answer words' probabilities, as drawn and edited."""
    words = answer_words(edit.sample)
    figure = Figure(figsize=(7.4, 3.0), layout="constrained")
    picture, bars = figure.subplots(1, 2, width_ratios=[1, 1.5])
    picture.imshow(edit.edited.pixels())
    for r, c in edit.changed:
        picture.add_patch(Rectangle((c * CELL, r * CELL), CELL - 1, CELL - 1, fill=False, ec="lime", lw=1.5, ls="--"))
    picture.set(xticks=[], yticks=[])
    picture.set_title(textwrap.fill(str(edit), 34), fontsize=8)
    x = np.arange(len(words))
    bars.bar(x - 0.2, clean, 0.4, color="0.75", label="as drawn")
    bars.bar(x + 0.2, edited, 0.4, color="tab:blue", label="edited")
    bars.set_xticks(x, words)
    bars.set(ylabel="probability", ylim=(0, 1.15 * max(clean.max(), edited.max(), 1e-3)))
    before, after = words[int(clean.argmax())], words[int(edited.argmax())]
    bars.set_title(f"{edit.sample.question}\nlikeliest answer: {before!r} -> {after!r}", fontsize=8)
    bars.legend(fontsize=7, frameon=False)
    return figure


@dataclass
class Editor:
    """A live editor (``live``: a ``LiveFigure`` with the controls "colour" and "move to") of the object in
    ``cell`` of ``sample``'s scene; ``edit`` is the current choice."""

    sample: Sample
    cell: Cell
    live: LiveFigure

    @property
    def edit(self) -> Edit:
        return Edit(self.sample, self.cell, **self.live.values)

    def _ipython_display_(self) -> None:
        self.live._ipython_display_()


def editor(spec, sample: Sample, cell: Cell | None = None) -> Editor:
    """Controls over the object in ``cell`` (default: the one ``sample`` asks about) of ``sample``'s scene: its
    colour (one of no other object, or erased; starts at the first other than its own) and the cell it moves to
    (its own, or an empty one). Each change draws the edited picture and the answer words' probabilities."""
    if not isinstance(sample, Sample):
        raise TypeError(f"sample={sample!r:.80}; expected an anatomy.toy.Sample")
    scene = sample.scene
    cell = tuple(cell) if cell is not None else (lambda t: (t.row, t.col))(scene.things[sample.target[0]])
    own = scene.things[thing_at(scene, cell)]
    colours = [(f"{c} (as drawn)" if c == own.colour else c, c) for c in free_colours(scene, cell)]
    cells = [(f"{cell} (as drawn)", cell)] + [(str(c), c) for c in free_cells(scene)]
    controls = {
        "colour": widgets.Dropdown(options=colours + [(ERASED, ERASED)], description="colour",
                                   value=next((c for _, c in colours if c != own.colour), ERASED)),
        "to": widgets.Dropdown(options=cells, value=cell, description="move to"),
    }  # fmt: skip
    words = answer_words(sample)
    clean = probabilities(spec, scene.pixels(), sample.question, words)

    def draw(colour: str, to: Cell) -> Figure:
        edit = Edit(sample, cell, colour, to)
        return editor_figure(edit, clean, probabilities(spec, edit.edited.pixels(), sample.question, words))

    return Editor(sample, cell, LiveFigure(draw, controls, dpi=90))


@dataclass
class PatchBack:
    """``patch_back``'s result: ``effects`` over (site, group), the edited cells' group ``group``, and the
    likeliest answer word as drawn and edited (``answers``)."""

    edit: Edit
    effects: CellEffects
    group: int
    answers: tuple[str, str]

    @property
    def restored(self) -> np.ndarray:
        """``(sites,)``: the effect of patching the edited cells back at each site (1 = the clean answer back)."""
        return self.effects.effects[0, :, self.group]

    @property
    def elsewhere(self) -> np.ndarray:
        """``(sites,)``: the largest ``|effect|`` of any single cell the edit left alone."""
        untouched = [g for g, cells in enumerate(self.effects.groups.members)
                     if len(cells) == 1 and cells[0] not in self.edit.changed]  # fmt: skip
        if not untouched:
            raise ValueError("no other cell was patched: run patch_back with alone=True")
        return np.abs(self.effects.effects[0][:, untouched]).max(-1)


def patch_back(spec, edit: Edit, sites=None, alone: bool = True) -> PatchBack:
    """Patch the clean picture's activations back into the edited picture's run, at each residual site (``sites``:
    as ``patching_sweep`` takes them): the edited cells together and, with ``alone``, every cell alone. Refuses an
    edit that leaves the likeliest answer word as it was: there is nothing to bring back."""
    words, question = answer_words(edit.sample), edit.sample.question
    clean, edited = (edit.sample.scene.pixels(), edit.edited.pixels())
    answers = tuple(words[int(probabilities(spec, p, question, words).argmax())] for p in (clean, edited))
    if answers[0] == answers[1]:
        raise ValueError(f"{edit} leaves the likeliest answer {answers[0]!r}: nothing to patch back; "
                         f"expected an edit that changes the answer")  # fmt: skip
    one = pair(spec, clean, question, corrupted_image=edited, system=None)
    single = cell_groups(spec, one.grid, "cell") if alone else Groups("cell", one.grid, (), ())
    together = (tuple(edit.changed),) if len(edit.changed) > 1 or not alone else ()
    groups = Groups("cell", one.grid, single.members + together, single.labels + ("edited cells",) * len(together))
    group = groups.members.index(tuple(edit.changed))
    effects = patching_sweep(spec, Contrast([one]), logit_diff(spec, *answers), sites=sites, cells=groups)
    return PatchBack(edit, effects, group, answers)


def site_label(name: str) -> str:
    """``vision.blocks.2.output`` -> ``vis 2 out``, ``decoder.layers.1.input`` -> ``dec 1 in``."""
    return (name.replace("vision.blocks.", "vis ").replace("decoder.layers.", "dec ").replace(".output", " out")
            .replace(".input", " in"))  # fmt: skip


def patch_back_figure(back: PatchBack) -> Figure:
    """Top: per site, each cell's effect painted over the edited picture (edited cells dashed). Bottom: per site,
    the effect of the edited cells patched back together, and the largest of any other cell."""
    result, sites = back.effects, back.effects.sites
    figure = Figure(figsize=(1.55 * len(sites) + 0.8, 4.2), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1, 1.1])
    axes = top.subplots(1, len(sites))
    singles = [g for g, cells in enumerate(result.groups.members) if len(cells) == 1]
    painted = np.full(result.grid, np.nan)
    picture = back.edit.edited.pixels()
    for axis, s in zip(axes, range(len(sites))):
        for g in singles:
            (r, c), = result.groups.members[g]
            painted[r, c] = result.effects[0, s, g]
        axis.imshow(picture)
        shown = axis.imshow(painted, cmap="RdBu_r", vmin=-1, vmax=1, alpha=0.7, interpolation="nearest",
                            extent=(-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))  # fmt: skip
        for r, c in back.edit.changed:
            axis.add_patch(Rectangle((c * CELL, r * CELL), CELL - 1, CELL - 1, fill=False, ec="lime", lw=1.2, ls="--"))
        axis.set(title=site_label(sites[s]), xticks=[], yticks=[])
        axis.title.set_fontsize(8)
    top.colorbar(shown, ax=axes, label="effect\n(1 = clean)", shrink=0.8)
    top.suptitle(f"one cell at a time patched back into the edited run: {back.answers[1]!r} -> {back.answers[0]!r}",
                 fontsize=9)  # fmt: skip
    line = bottom.subplots()
    x = np.arange(len(sites))
    line.plot(x, back.restored, "o-", label=f"the edited cells {back.edit.changed}, patched back together")
    line.plot(x, back.elsewhere, "s--", color="0.5", label="any other cell (largest |effect|)")
    line.axhline(1, color="0.8", lw=0.8)
    line.set_xticks(x, [site_label(s) for s in sites], fontsize=8)
    line.set(ylabel="effect (1 = clean)", ylim=(-0.1, 1.15))
    line.legend(fontsize=7, frameon=False, loc="center left")
    return figure
