"""The memory budget of an attention capture, shared by the vision and decoder recorders.

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


def check_reduce(reduce: str) -> str:
    """``"none"`` keeps every chosen head, ``"mean"`` averages over them; anything else is refused."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; expected one of {REDUCTIONS}")
    return reduce
