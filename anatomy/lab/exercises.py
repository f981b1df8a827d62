"""Exercise checks for the notebooks: answers start as None and are checked in place."""

from __future__ import annotations


def verdict(answer, expected, tolerance: float = 0.0, alternatives: tuple = ()) -> str:
    """``"not answered yet"``, ``"right"`` or ``"not right yet, try again"``.

    ``tolerance`` accepts numbers that close to ``expected``; ``alternatives``
    lists other answers that are right too.

    >>> verdict(None, 3), verdict(3, 3), verdict(2.98, 3, tolerance=0.05)
    ('not answered yet', 'right', 'right')
    >>> verdict("::1", "127.0.0.1", alternatives=("::1",))
    'right'
    """
    if answer is None:
        return "not answered yet"
    numeric = tolerance and isinstance(answer, (int, float)) and not isinstance(answer, bool)
    right = abs(answer - expected) <= tolerance if numeric else answer == expected or answer in alternatives
    return "right" if right else "not right yet, try again"


def check(number: int, answer, expected, tolerance: float = 0.0, alternatives: tuple = ()) -> None:
    """Print the verdict on exercise ``number``."""
    print(f"exercise {number}: {verdict(answer, expected, tolerance, alternatives)}")
