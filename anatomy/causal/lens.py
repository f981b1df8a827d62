"""The logit lens on image tokens, with the user's own words: what each cell of a picture would say, layer by layer.

>>> lens = image_lens(spec, encode(spec, "street.jpg", "What colour is the car?"), words=["red", "blue"])
>>> lens.top[3]                 # (rows, cols): the likeliest token after decoder layer 3, decoded (' red', not 'Ġred')
>>> lens.rank[3, 0, 2]          # (words,): each word's rank in the vocabulary at cell (0, 2), 1 = the likeliest
>>> lens_figure(lens, word="red")

After each decoder layer, each image token's residual stream goes through the model's final RMSNorm and
``lm_head`` (``anatomy.decoder.logit_lens.lens_logits``); after the last layer that is the model's own logits
at the image tokens. The grid is the prompt's one picture's, read from ``image_grid_thw``: (rows, cols) of
merged cells, one image token each, in raster order.

A word is read as one token, the token the tokenizer makes of it on its own: ``"red"`` is what the model says
at the start of its answer, ``" red"`` (with a space) the word inside a sentence. A word of several tokens
is refused with its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.figure import Figure
from PIL import Image

from anatomy.capture import capture
from anatomy.causal.probes import picture_grids
from anatomy.decoder.logit_lens import lens_logits
from anatomy.inputs import resized
from anatomy.lab.figures import drawable, grid_lines, label_fonts
from anatomy.model import decoder_layers, unwrap
from anatomy.processor import one_line, token_text, token_texts

SHOWN_LAYERS = 4  # panels lens_figure draws by default


def word_ids(spec, words) -> tuple[int, ...]:
    """Each word's one token id; refuses a word of several tokens, showing them."""
    if isinstance(words, str) or not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise TypeError(f"words={words!r}; expected a list of strings, e.g. ['red', 'blue']")
    tokenizer, ids = spec.processor.tokenizer, []
    for word in words:
        tokens = tokenizer(word, add_special_tokens=False).input_ids
        if len(tokens) != 1:
            raise ValueError(f"word {word!r} is {len(tokens)} tokens {token_texts(tokenizer, tokens)}; the lens "
                             f"reads one token per word: give one of them, or another word")  # fmt: skip
        ids.append(tokens[0])
    return tuple(ids)


@dataclass
class Lens:
    """What each image cell says after each decoder layer.

    Attributes:
        sites: the decoder layers' output sites read, ``(layers,)``.
        top: ``(layers, rows, cols)`` the likeliest token, decoded; ``top_probability`` its probability.
        words: the user's words; ``rank`` ``(layers, rows, cols, words)`` each word's rank (1: the likeliest
            token), ``probability`` its probability.
        picture: the prompt's picture at its processed size, ``rows * 28`` x ``cols * 28`` px.
    """

    sites: list[str]
    top: np.ndarray
    top_probability: np.ndarray
    words: tuple[str, ...]
    rank: np.ndarray
    probability: np.ndarray
    picture: Image.Image

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of cells."""
        return self.top.shape[1], self.top.shape[2]


def image_lens(spec, prompt, words=(), chunk: int = 256) -> Lens:
    """Read every image token of ``prompt`` (one picture) after every decoder layer through the lens.

    ``chunk``: image-token states unembedded at a time (each costs a vocabulary-wide row of logits).
    """
    (rows, cols), ids = picture_grids(spec, [prompt])[0], word_ids(spec, words)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}; expected a positive number of image tokens")
    model = unwrap(spec)
    sites = [f"decoder.layers.{i}.output" for i in range(len(decoder_layers(spec)))]
    with torch.no_grad(), capture(model, sites) as cache:
        model(**prompt, logits_to_keep=1, use_cache=False)
    image = prompt["input_ids"][0].cpu() == spec.config.image_token_id  # (S,)
    stream = torch.cat([cache[site][0, image] for site in sites])  # (layers * cells, D), each layer in raster order
    wanted = torch.tensor(ids, dtype=torch.long)
    tops, top_probs, ranks, probs = [], [], [], []
    for part in stream.split(chunk):
        logits = lens_logits(spec, part.to(model.device)).float().cpu()  # (chunk, vocab)
        chosen = logits[:, wanted]  # (chunk, words)
        probability = torch.softmax(logits, -1)
        best = probability.max(-1)
        tops += [token_text(spec.processor.tokenizer, int(i)) for i in best.indices]
        top_probs.append(best.values)
        above = [(logits > chosen[:, [k]]).sum(-1, dtype=torch.int32) for k in range(len(ids))]  # likelier tokens
        ranks.append(1 + torch.stack(above, -1) if ids else torch.zeros(len(part), 0, dtype=torch.int32))
        probs.append(probability[:, wanted])
    shape = len(sites), rows, cols
    return Lens(sites, np.array(tops, dtype=object).reshape(shape), torch.cat(top_probs).reshape(shape).numpy(),
                tuple(words), torch.cat(ranks).reshape(*shape, len(ids)).numpy(),
                torch.cat(probs).reshape(*shape, len(ids)).numpy(), resized(prompt.image, prompt.grid_thw[0]))


def _shown(lens: Lens, layers) -> list[int]:
    count = len(lens.sites)
    if layers is None:
        return sorted({round(k * (count - 1) / (SHOWN_LAYERS - 1)) for k in range(SHOWN_LAYERS)})
    chosen = [layers] if isinstance(layers, int) else list(layers)
    bad = [x for x in chosen if not isinstance(x, int) or not 0 <= x < count]
    if bad or not chosen:
        raise ValueError(f"layers={layers!r}; expected decoder layers 0 to {count - 1}")
    return chosen


def _fitted(text: str, cell: float, largest: float = 9, smallest: float = 3) -> float:
    """A font size (points) at which ``text``'s lines fit in a square cell of ``cell`` points, within bounds."""
    lines = text.split("\n")
    across = 0.9 * cell / (0.6 * max(len(line) for line in lines))  # a character is about 0.6 em wide
    down = 0.9 * cell / (1.25 * len(lines))
    return float(np.clip(min(across, down), smallest, largest))


def lens_figure(lens: Lens, layers=None, word: str | None = None) -> Figure:
    """The picture once per decoder layer in ``layers`` (default: up to 4, first and last included), each cell
    with its likeliest token written on it; with ``word`` (one of ``lens.words``), cells tinted by its probability.
    """
    shown = _shown(lens, layers)
    if word is not None and word not in lens.words:
        raise ValueError(f"word={word!r} was not read; the lens read {list(lens.words)}")
    rows, cols = lens.grid
    height, width = lens.picture.height, lens.picture.width
    step = height // rows  # px per cell
    panel = 4.2  # inches across one panel
    figure = Figure(figsize=(panel * len(shown) + (1.2 if word else 0.4), panel * height / width + 0.9),
                    layout="constrained")  # fmt: skip
    axes = np.atleast_1d(figure.subplots(1, len(shown)))
    cell_points = panel * 72 / cols  # a cell's side, in points
    outline = [patheffects.withStroke(linewidth=2, foreground="white")]
    for axis, layer in zip(axes, shown):
        axis.imshow(lens.picture, alpha=0.55)
        if word is not None:
            tint = lens.probability[layer, ..., lens.words.index(word)]
            shaded = axis.imshow(tint, extent=(-0.5, width - 0.5, height - 0.5, -0.5), cmap="magma", alpha=0.5,
                                 vmin=0, vmax=max(float(lens.probability[..., lens.words.index(word)].max()), 1e-12))
        grid_lines(axis, (height, width), step, width=0.4)
        for (row, col), token in np.ndenumerate(lens.top[layer]):
            shown = drawable(one_line(token.strip() or token), 10, wrap=6)
            axis.text(col * step + step / 2 - 0.5, row * step + step / 2 - 0.5, shown, ha="center", va="center",
                      fontsize=_fitted(shown, cell_points), fontfamily=label_fonts(), path_effects=outline)
        axis.set(xticks=[], yticks=[], xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))
        axis.set_title(f"after decoder layer {layer}", fontsize=9)
    if word is not None:
        figure.colorbar(shaded, ax=list(axes), label=f"probability of '{drawable(one_line(word))}'", shrink=0.8)
    figure.suptitle(f"logit lens on the image tokens: each cell's likeliest token ({rows} x {cols} cells)",
                    fontsize=10)
    return figure
