"""Exercise checks for the notebooks: answers start as None and are checked in place."""

from __future__ import annotations


def verdict(answer, expected, tolerance: float = 0.0) -> str:
    """``"not answered yet"``, ``"right"`` or ``"not right yet, try again"``.

    >>> verdict(None, 3), verdict(3, 3), verdict(2.98, 3, tolerance=0.05)
    ('not answered yet', 'right', 'right')
    """
    if answer is None:
        return "not answered yet"
    if tolerance and isinstance(answer, (int, float)):
        return "right" if abs(answer - expected) <= tolerance else "not right yet, try again"
    return "right" if answer == expected else "not right yet, try again"


def check(number: int, answer, expected, tolerance: float = 0.0) -> None:
    """Print the verdict on exercise ``number``."""
    print(f"exercise {number}: {verdict(answer, expected, tolerance)}")
