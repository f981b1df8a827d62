"""The toy Qwen2.5-VL: the real classes at small sizes, trained here on coloured shapes.

A randomly initialised model's attention is noise. The toy model is trained
(in about 3 minutes on 2 CPU cores, on first use, then cached) to answer questions
that need one object found: "What colour is the circle?", "Is the red circle
on the left or the right?", "How many circles are there?". Its answer
position attends to the object asked about.

    shapes    the pixels: shapes drawn into the cells of a 4x4 grid
    task      pictures and questions, deterministic from a seed
    encode    samples -> model inputs, as the real processor makes them
    training  the training loop and its ``Recipe``
    kernels   exact shortcuts used while training: batched vision windows, the patch
              embedding as one matmul, rotary positions and windows once per layout
    cache     the verified, atomically written cache directory
    load      ``load_toy``: train once, then load
    evaluate  held-out accuracy and where the answer's attention goes
    figures   that evidence drawn: per-layer bars, pictures beside the answer's attention
    cli       ``main_toy``: ``python -m anatomy toy ensure|train|path|evaluate``
"""

from anatomy.toy.cache import CACHE_ENV, CacheError, cache_dir
from anatomy.toy.cli import main_toy
from anatomy.toy.encode import messages
from anatomy.toy.evaluate import Report
from anatomy.toy.load import load_toy, untrained_toy
from anatomy.toy.task import QUESTION_TYPES, Sample, Scene, questions, sample
from anatomy.toy.training import Recipe, toy_config, train

__all__ = [
    "CACHE_ENV",
    "CacheError",
    "QUESTION_TYPES",
    "Recipe",
    "Report",
    "Sample",
    "Scene",
    "cache_dir",
    "load_toy",
    "main_toy",
    "messages",
    "questions",
    "sample",
    "toy_config",
    "train",
    "untrained_toy",
]
