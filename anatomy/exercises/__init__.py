"""The notebooks' exercises, by name: ``check_answer("patchify", patchify)`` prints the verdict.

"Implement it" exercises run the student's function on random inputs at several sizes and compare it with the
package's own implementation; "predict, then verify" exercises compare a value with one the package computes
from the notebook's objects. The framework (cases, hints, verdicts) is ``anatomy.lab.exercises``; the solutions
are in the teachers' guide, ``docs/teachers/``, never in the student notebooks.

| notebook | exercises |
|---|---|
| 00 | ``bigger_picture``, ``picture_twice`` (the processor, question and picture), ``capped_screenshot`` (predict, then
verify: token counts) |
| 01 | ``attention_parameters`` |
| 02 | ``chat_prompt`` |
| 03 | ``smart_resize``, ``patchify``, ``memory_ratio`` (predict, then verify) |
| 04 | ``rotation_angles``, ``window_ids`` |
| 05 | ``merge`` |
| 06 | ``mrope_ids`` (needs ``specimen=``), ``video_time_step`` and ``second_picture_ids`` (predict, then verify) |
| 07 | ``attention_probs``, ``busiest_head`` (predict, then verify) |
| 08 | ``per_area``; ``seed_passes`` (predict, then verify: ``toy_seed=`` and ``steps=``; retrains a toy) |
| 09 | ``patch_by_hand`` (needs the toy as ``specimen=``); ``zeroed_where``, ``blocked_colour``, ``patched_answer`` (predict, then verify; the toy as ``specimen=``, the question as ``asked=``) |
| 10 | ``lens_top`` (needs ``specimen=``) |
| 11 | ``attribution_by_hand`` (needs the toy as ``specimen=``); ``erased_stops``, ``moved_together``,
``circle_last_site`` (predict, then verify; the toy and the notebook's edits) |
"""

from __future__ import annotations

from anatomy.exercises import decoder, overview, toy, vision
from anatomy.lab.exercises import Exercise, Verdict

_MODULES = (overview, vision, decoder, toy)
CAUSAL = ("patch_by_hand", "zeroed_where", "blocked_colour", "patched_answer",  # notebook 09's
          "attribution_by_hand", "erased_stops", "moved_together", "circle_last_site")  # 11's: all of them run the toy
EXERCISES: dict[str, Exercise] = {
    value.name: value for module in _MODULES for value in vars(module).values() if isinstance(value, Exercise)
}


def exercise(name: str) -> Exercise:
    """The exercise called ``name``; notebooks 09's and 11's (``CAUSAL``) are imported on first use."""
    if name in CAUSAL:
        from anatomy.exercises import causal

        return getattr(causal, name.upper())
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; expected one of {sorted([*EXERCISES, *CAUSAL])}")
    return EXERCISES[name]


def judge(name: str, answer, seed: int | None = None, **context) -> Verdict:
    """The verdict on ``answer`` to exercise ``name`` (``context``: the notebook's objects it needs)."""
    return exercise(name).judge(answer, seed=seed, **context)


def check_answer(name: str, answer, **context) -> None:
    """Print the verdict on ``answer`` to exercise ``name``: right, not answered yet, or a hint."""
    print(judge(name, answer, **context))
