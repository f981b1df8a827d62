"""Causal anatomy: edit what flows through Qwen2.5-VL and measure what the answer depends on, for any specimen
and picture (notebook 09 runs it on the toy, through ``anatomy.toy.experiments``).

    edits          what an edit changes: ``zero``, ``mean``, ``patch``, ``knock_out``; ``record`` a source run
    select         cells, patches, positions, heads and rows -> masks in the model's own order
    interventions  ``intervene(model, edits)``: the context manager that applies them
    metrics        what a run is worth: ``logit_diff``, ``probability``, teacher-forced ``log_prob``, ``as_metric``
    contrast       clean and corrupted prompts, aligned by cell and position; ``check`` them with a metric
    attention_mask attention knockout as an edit of the attention mask
    batches        rows of a batch: picked and repeated, pictures' image tokens reused, the answer's logits
    groups         image cells in groups: one cell, 2x2, one vision window, or pixel boxes
    sweeps         activation patching of any contrast over (site, cell group) and (site, position), batched
    attribution    attribution patching: every (site, group) and (site, position) from one gradient; ``compare``
    knockouts      ``knockout_sweep``: answer -> image attention blocked per (decoder layer, cell group), any contrast
    probes         ``probe``: linear probes on the user's labelled prompts, pooled or per cell, against a control
    lens           ``image_lens``: the logit lens on a picture's image tokens, with the user's own words
    heads          ``head_sweep``: one decoder head zeroed, mean- or patch-ablated at a time, any contrast
    agreement      the answer's attention per cell (the budgeted recorder) against the patching effect
    cost           what a sweep costs, from a config (the 7B on a GPU)
    calls          the model calls and memory of each sweep, counted without running it
    plan           ``plan`` (``from anatomy.causal.plan import plan``): rows, passes, peak memory, time, before a run
    command        ``python -m anatomy patch|knockout|heads``: two pictures in, figures and JSON out
"""
from anatomy.causal.agreement import Agreement, agreement, agreement_figure, answer_attention
from anatomy.causal.attribution import Attribution, RankAgreement, attribution, compare, top_cells
from anatomy.causal.batches import answer_logits
from anatomy.causal.contrast import Check, Contrast, Pair, pair
from anatomy.causal.cost import sweep_cost
from anatomy.causal.edits import Edit, Knockout, Layout, Recording, knock_out, mean, patch, record, zero
from anatomy.causal.groups import Groups, cell_groups
from anatomy.causal.heads import Heads, head_sweep
from anatomy.causal.interventions import intervene
from anatomy.causal.knockouts import Knockouts, knockout_sweep
from anatomy.causal.lens import Lens, image_lens
from anatomy.causal.metrics import Metric, as_metric, log_prob, logit_diff, measure, probability
from anatomy.causal.probes import Probes, probe
from anatomy.causal.sweeps import CellEffects, PositionEffects, patching_sweep, position_sweep

__all__ = [
    "Agreement",
    "Attribution",
    "CellEffects",
    "Check",
    "Contrast",
    "Edit",
    "Groups",
    "Heads",
    "Knockout",
    "Knockouts",
    "Layout",
    "Lens",
    "Metric",
    "Pair",
    "PositionEffects",
    "Probes",
    "RankAgreement",
    "Recording",
    "agreement",
    "agreement_figure",
    "answer_attention",
    "answer_logits",
    "as_metric",
    "attribution",
    "cell_groups",
    "compare",
    "head_sweep",
    "image_lens",
    "intervene",
    "knock_out",
    "knockout_sweep",
    "log_prob",
    "logit_diff",
    "mean",
    "measure",
    "pair",
    "patch",
    "patching_sweep",
    "position_sweep",
    "probability",
    "probe",
    "record",
    "sweep_cost",
    "top_cells",
    "zero",
]
