"""The toy Qwen2.5-VL: the real classes at small sizes, trained on coloured shapes, shipped in the package.

A randomly initialised model's attention is noise. The toy model was trained
(on a CPU, once) to answer questions that need one object found: "What colour
is the circle?", "Is the red circle on the left or the right?", "How many
circles are there?", and to end its turn with ``<|im_end|>``. Its answer
position attends to the object asked about. Its trained weights ship in
``anatomy/toy/shipped/`` (2.6 MB); the frozen embedding is regenerated from
its seed, bit for bit, on any machine. ``python -m anatomy toy train`` retrains
one (minutes on a CPU) into a verified cache.

    shapes     the pixels: shapes drawn into the cells of a 4x4 grid
    task       pictures and questions, deterministic from a seed
    encode     samples -> model inputs, as the real processor makes them
    embedding  the frozen embedding from its seed: a counter-based integer generator
    training   the training loop, its ``Recipe`` and its learning curve (``Log``)
    kernels    rotary positions and vision windows computed once per batch layout, for training
    weights    a toy directory: trained tensors as safetensors, curve, manifest of hashes
    cache      where retrained toys live: verified, swapped in whole, one trainer at a time
    load       ``load_toy``: the shipped toy (or a retrained one); ``ensure_trained``
    evaluate   held-out accuracy, turn ending, and where the answer's attention goes
    figures    that evidence drawn, and the learning curve
    curve      the learning curve read: the plateau, the snap, the ratios per layer
    example    the running example of notebooks 03-07, 10 and 11: one held-out picture and question
    edit       one object of a scene recoloured, moved or erased, by its cell (notebook 11)
    editor     the counterfactual editor: a live figure of the edited picture and the answer's probabilities
    experiments  the toy as one adapter of ``anatomy.causal``: its questions as contrasts, its sweeps and figures
    cli        ``main_toy``: ``python -m anatomy toy evaluate|train|ensure|path``
"""

from anatomy.toy.cache import CACHE_ENV, CacheError, cache_dir
from anatomy.toy.cli import main_toy
from anatomy.toy.encode import messages
from anatomy.toy.evaluate import Report
from anatomy.toy.load import ensure_trained, load_toy, untrained_toy
from anatomy.toy.task import QUESTION_TYPES, Sample, Scene, questions, sample
from anatomy.toy.training import Recipe, toy_config, train
from anatomy.toy.weights import SHIPPED, read_curve

__all__ = [
    "CACHE_ENV",
    "CacheError",
    "QUESTION_TYPES",
    "Recipe",
    "Report",
    "SHIPPED",
    "Sample",
    "Scene",
    "cache_dir",
    "ensure_trained",
    "load_toy",
    "main_toy",
    "messages",
    "questions",
    "read_curve",
    "sample",
    "toy_config",
    "train",
    "untrained_toy",
]
