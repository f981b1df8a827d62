"""Causal anatomy: edit what flows through Qwen2.5-VL and measure what the answer depends on.

    edits          what an edit changes: ``zero``, ``mean``, ``patch``, ``knockout``; ``record`` a source run
    select         cells, patches, positions, heads and rows -> masks in the model's own order
    interventions  ``intervene(model, edits)``: the context manager that applies them
"""

from anatomy.causal.edits import Edit, Knockout, Layout, Recording, knockout, mean, patch, record, zero
from anatomy.causal.interventions import intervene

__all__ = ["Edit", "Knockout", "Layout", "Recording", "intervene", "knockout", "mean", "patch", "record", "zero"]
