"""Memory budgets: of an attention capture (shared by the vision and decoder recorders), and of a whole job.

Both recorders estimate the bytes they will materialise before any hook is set,
and refuse with ``AttentionBudgetExceeded`` when the estimate is above ``budget_bytes``:

>>> try:
...     check_budget(2_000, 1_000, "choose fewer heads")
... except AttentionBudgetExceeded as error:
...     print(error)
attention capture would materialise about 2,000 bytes (0.0 MiB), above budget_bytes=1,000; choose fewer heads
"""

from __future__ import annotations

FLOAT_BYTES = 4  # attention probabilities are computed and kept in float32
REDUCTIONS = ("none", "mean")


class AttentionBudgetExceeded(ValueError):
    """The estimated memory of an attention capture is above the caller's budget."""


def check_budget(estimate: int, budget_bytes: int | None, advice: str) -> None:
    """Raise ``AttentionBudgetExceeded`` when ``estimate`` is above ``budget_bytes`` (``None``: no budget)."""
    if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)):
        raise ValueError(f"budget_bytes={budget_bytes!r}; expected a number of bytes (int) or None")
    if budget_bytes is not None and estimate > budget_bytes:
        raise AttentionBudgetExceeded(
            f"attention capture would materialise about {estimate:,} bytes ({estimate / 2**20:.1f} MiB), "
            f"above budget_bytes={budget_bytes:,}; {advice}"
        )


def check_gib(budget_gib) -> float:
    """``budget_gib`` if it is a positive number of GiB; else one ``ValueError`` naming it."""
    if isinstance(budget_gib, bool) or not isinstance(budget_gib, (int, float)) or not budget_gib > 0:
        raise ValueError(f"budget_gib={budget_gib!r}; expected a positive number of GiB")
    return budget_gib


def check_job_budget(parts: dict[str, int], budget_gib: float, advice: str) -> None:
    """Refuse a job (``MemoryError``) whose parts (bytes each) add up to more than ``budget_gib`` GiB; the
    message names every part, in GiB to two decimals, and ends with ``advice``.

    >>> check_job_budget({"activations": 3 * 2**29, "copies": 2**29}, 1.5, "use fewer cells")
    Traceback (most recent call last):
    ...
    MemoryError: this job would hold about 2.00 GiB (activations 1.50 GiB, copies 0.50 GiB), above budget_gib=1.5; use fewer cells
    """
    total = sum(parts.values())
    if total > budget_gib * 2**30:
        detail = ", ".join(f"{name} {size / 2**30:.2f} GiB" for name, size in parts.items())
        raise MemoryError(f"this job would hold about {total / 2**30:.2f} GiB ({detail}), above "
                          f"budget_gib={budget_gib:g}; {advice}")


def check_reduce(reduce: str) -> str:
    """``"none"`` keeps every chosen head, ``"mean"`` averages over them; anything else is refused."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; expected one of {REDUCTIONS}")
    return reduce
