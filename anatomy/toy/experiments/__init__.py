"""The toy's causal experiments (notebook 09): the toy as one adapter over ``anatomy.causal``.

    contrasts  toy questions as contrasts: ``counterfactual`` pictures, ``contrasts`` (pairs and the answers'
               logit difference), ``toy_batch`` (left-padded batches with the answers' ids)
    patching   ``patching``: (site, cell) and the answer position, from ``patching_sweep`` and ``position_sweep``;
               ``positions``: every prompt position at one site; ``handoff``, figures
    knockout   answer -> image attention blocked per decoder layer: accuracy per question type
    ablation   one decoder head zeroed at a time: accuracy per question type
    probes     linear probes on every cell at every depth, against a random-init control
    lens       the logit lens read on image tokens: does an object's cell say its colour?

>>> questions = contrasts(spec, [sample(0, "test", i) for i in range(9)])
>>> sweep = patching(spec, questions)                       # (questions, sites, cells + 1), 1 = answer flipped
"""

from anatomy.toy.experiments.ablation import Ablation, ablation_figure, head_ablation
from anatomy.toy.experiments.contrasts import Questions, answer_only, contrasts, counterfactual, toy_batch
from anatomy.toy.experiments.knockout import KnockoutResult, knockout_by_layer, knockout_figure, knockout_queries
from anatomy.toy.experiments.lens import ImageLens, image_lens, lens_figure
from anatomy.toy.experiments.patching import (
    Positions,
    Sweep,
    handoff,
    patching,
    position_figure,
    positions,
    profile_figure,
    sweep_figure,
)
from anatomy.toy.experiments.probes import ProbeResult, probe_figure, probe_layers

__all__ = [
    "Ablation",
    "ImageLens",
    "KnockoutResult",
    "Positions",
    "ProbeResult",
    "Questions",
    "Sweep",
    "ablation_figure",
    "answer_only",
    "contrasts",
    "counterfactual",
    "handoff",
    "head_ablation",
    "image_lens",
    "knockout_by_layer",
    "knockout_figure",
    "knockout_queries",
    "lens_figure",
    "patching",
    "position_figure",
    "positions",
    "probe_figure",
    "probe_layers",
    "profile_figure",
    "sweep_figure",
    "toy_batch",
]
