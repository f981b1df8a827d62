"""Reading the learning curve (``training.Log.curve``, shipped as ``curve.json``): when did the toy start to look?

>>> curve = read_curve()                              # doctest: +SKIP
>>> snap(curve)                                       # the check where attention jumped most, and by how much
{'step': 1100, 'layer': 1, 'before': 1.3, 'after': 6.0, ...}
"""

from __future__ import annotations

import numpy as np


def ratios(curve: list[dict]) -> np.ndarray:
    """Target / distractor attention per cell at each check, ``(checks, layers)``."""
    return np.array([e["ratios"] for e in curve])


def snap(curve: list[dict]) -> dict:
    """The check with the largest jump of the ratio (in any layer) over the previous check: ``step``, ``layer``,
    ``before`` and ``after`` (the ratios), ``previous_step``, and the accuracy per type before and after."""
    if len(curve) < 2:
        raise ValueError(f"need at least two checks to find a jump, got {len(curve)}")
    r = np.log(ratios(curve))
    jumps = r[1:] - r[:-1]  # (checks - 1, layers)
    i, layer = np.unravel_index(np.argmax(jumps), jumps.shape)
    before, after = curve[i], curve[i + 1]
    return {"step": after["step"], "previous_step": before["step"], "layer": int(layer),
            "before": before["ratios"][layer], "after": after["ratios"][layer],
            "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"]}  # fmt: skip


def plateau(curve: list[dict], ratio: float = 2.0) -> list[dict]:
    """The checks before the answer position first puts ``ratio`` times more attention per cell on the target
    than on the distractors, in any layer: the model has not begun to look yet."""
    looked = [i for i, e in enumerate(curve) if max(e["ratios"]) >= ratio]
    return curve[: looked[0]] if looked else list(curve)
