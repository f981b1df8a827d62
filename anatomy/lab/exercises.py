"""Exercise checks for the notebooks: a verdict on a typed value, or on a function the student wrote.

A *value* exercise compares a typed answer with an expected one (``verdict``, ``check``). An *implement it*
exercise (``Exercise``) runs the student's function on cases, random inputs at several sizes, and compares
every result with the package's own implementation. A wrong answer gets a hint that says what differs
(type, shape, dtype, which element, on which input), never the expected answer; an answer of the wrong
type, a function that raises or returns the wrong kind of thing, gets a hint too, never a traceback. A stub
left as committed (returning None, or raising NotImplementedError) is "not answered yet".

>>> def double(x): return 2 * x
>>> exercise = Exercise("double", "double(x) -> 2x", lambda rng: [Case("x = 1", (1,), 2), Case("x = 5", (5,), 10)])
>>> exercise.judge(double).status, exercise.judge(lambda x: None).status, exercise.judge(lambda x: x + 1).hint
('right', 'not answered yet', 'on x = 5, your function returns 6, which is not it')
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

NOT_ANSWERED = "not answered yet"


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
        return NOT_ANSWERED
    numeric = tolerance and isinstance(answer, (int, float)) and not isinstance(answer, bool)
    right = abs(answer - expected) <= tolerance if numeric else answer == expected or answer in alternatives
    return "right" if right else "not right yet, try again"


def check(number, answer, expected, tolerance: float = 0.0, alternatives: tuple = ()) -> None:
    """Print the verdict on exercise ``number``."""
    print(f"exercise {number}: {verdict(answer, expected, tolerance, alternatives)}")


@dataclass(frozen=True)
class Case:
    """One input of an exercise: a label for hints (the input's size), the arguments, and the expected result."""

    label: str
    args: tuple
    expected: Any


@dataclass(frozen=True)
class Verdict:
    """``status`` is ``"right"``, ``"not answered yet"`` or ``"not right yet"``; ``hint`` says what differs."""

    name: str
    status: str
    hint: str = ""

    def __str__(self) -> str:
        return f"exercise {self.name}: {self.status}" + (f": {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class Exercise:
    """An exercise checked on ``cases(rng, **context)``.

    Attributes:
        name: how notebooks and hints name it.
        task: what the answer is, e.g. ``"a function patchify(image) -> (patches, 1176) tensor"``.
        cases: ``(random.Random, **context) -> [Case]``; each expected result comes from the package.
        compare: ``(got, expected) -> hint or None`` (default ``same``).
        diagnose: known wrong answers: ``(got, case) -> hint or None``, tried before ``compare``.
        function: True when the answer is a function called on each case's arguments; False when it is a value.
        needs: the keywords ``cases`` takes from the notebook (``specimen``, ...).
    """

    name: str
    task: str
    cases: Callable[..., list[Case]]
    compare: Callable[[Any, Any], str | None] = field(default=None)
    diagnose: Callable[[Any, Case], str | None] | None = None
    function: bool = True
    needs: tuple[str, ...] = ()

    def judge(self, answer, seed: int | None = None, **context) -> Verdict:
        """The verdict on ``answer``, on cases drawn with ``seed`` (None: fresh random ones)."""
        if answer is None or answer is Ellipsis:
            return Verdict(self.name, NOT_ANSWERED)
        if self.function and not callable(answer):
            return self._wrong(f"expected {self.task}; got {_kind(answer)}")
        if sorted(context) != sorted(self.needs):
            raise ValueError(f"exercise {self.name} takes {list(self.needs) or 'no'} keywords; got {sorted(context)}")
        cases = self.cases(random.Random(seed), **context)
        for case in cases:
            hint = self._one(answer, case)
            if hint == NOT_ANSWERED:
                return Verdict(self.name, NOT_ANSWERED)
            if hint:
                return self._wrong(hint)
        return Verdict(self.name, "right", f"checked on {len(cases)} inputs" if self.function else "")

    def check(self, answer, **context) -> None:
        """Print the verdict on ``answer``."""
        print(self.judge(answer, **context))

    def _one(self, answer, case: Case) -> str | None:
        got = answer
        if self.function:
            try:
                got = answer(*_copies(case.args))
            except NotImplementedError:
                return NOT_ANSWERED
            except Exception as error:  # the student's code: reported as a hint, never a traceback
                return f"on {case.label}, your function raised {type(error).__name__}: {_short(str(error))}"
            if got is None:
                return NOT_ANSWERED
        hint = (self.diagnose(got, case) if self.diagnose else None) or (self.compare or same)(got, case.expected)
        if not hint:
            return None
        if not self.function:
            return hint.replace("{yours}", "your answer is")
        return f"on {case.label}, " + hint.replace("{yours}", "your function returns")

    def _wrong(self, hint: str) -> Verdict:
        return Verdict(self.name, "not right yet", hint)


def _copies(args: tuple) -> tuple:
    """The arguments as fresh copies, so a function that edits its inputs in place cannot change the check."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value) -> str:
    """``a tensor of shape (2, 3)``, ``a list of 4 items``, ``an int``: what a value is, for hints."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def same(got, expected) -> str | None:
    """A hint when ``got`` is not ``expected``, or None. Tensors go to ``same_tensor``; other values must be equal."""
    if isinstance(expected, torch.Tensor):
        return same_tensor(got, expected)
    if isinstance(expected, tuple) and not isinstance(got, (tuple, list)):
        return f"{{yours}} {_kind(got)}; expected a tuple of {len(expected)} items"
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)):
        if len(got) != len(expected):
            return f"{{yours}} {_kind(got)}; expected {len(expected)} items"
        wrong = [i for i, (a, b) in enumerate(zip(got, expected)) if same(a, b)]
        return f"{{yours}} {_show(got)}: item {wrong[0]} is not right" if wrong else None
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(got, (torch.Tensor, np.ndarray)) and np.prod(got.shape) == 1:
            got = got.item()
        if not isinstance(got, (int, float, np.integer, np.floating)) or isinstance(got, bool):
            return f"{{yours}} {_kind(got)}; expected a number"
        if isinstance(expected, int) and float(got) != int(got):
            return f"{{yours}} {got}, not a whole number"
        right = got == expected if isinstance(expected, int) else abs(got - expected) <= 1e-6 * max(1, abs(expected))
        return None if right else f"{{yours}} {_show(got)}, which is not it"
    return None if got == expected else f"{{yours}} {_show(got)}, which is not it"


def _show(value) -> str:
    """A student's value for a hint: tensors as plain lists."""
    plain = lambda v: v.tolist() if isinstance(v, (torch.Tensor, np.ndarray)) else v  # noqa: E731
    return _short(repr(type(value)(map(plain, value)) if isinstance(value, (tuple, list)) else plain(value)), 80)


def same_tensor(got, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """A hint when the tensor ``got`` differs from ``expected`` in type, shape, dtype kind or values; else None.

    The hint names the first dimension or element that differs and the student's value there, never the
    expected one.

    >>> same_tensor(torch.zeros(2, 3), torch.zeros(2, 4))
    '{yours} a tensor of shape (2, 3): dimension 1 is not right'
    >>> same_tensor(torch.tensor([1., 2., 5.]), torch.tensor([1., 2., 3.]))
    '{yours} the wrong value at index (2,): 5 (1 of 3 elements differ)'
    """
    if isinstance(got, (list, tuple, np.ndarray, int, float)):
        try:
            got = torch.as_tensor(np.asarray(got))
        except (TypeError, ValueError):
            return f"{{yours}} {_kind(got)}, which is not a tensor"
    if not isinstance(got, torch.Tensor):
        return f"{{yours}} {_kind(got)}; expected a tensor"
    if got.ndim != expected.ndim:
        return f"{{yours}} a tensor of shape {tuple(got.shape)}: {got.ndim} dimensions, expected {expected.ndim}"
    if got.shape != expected.shape:
        dim = next(i for i, (a, b) in enumerate(zip(got.shape, expected.shape)) if a != b)
        return f"{{yours}} a tensor of shape {tuple(got.shape)}: dimension {dim} is not right"
    if got.is_complex() or got.dtype == torch.bool:
        return f"{{yours}} a tensor of dtype {got.dtype}; expected {'whole numbers' if not expected.is_floating_point() else 'real numbers'}"
    got = got.detach().cpu()
    if not expected.is_floating_point():
        if got.is_floating_point() and not torch.equal(got, got.round()):
            return f"{{yours}} a {got.dtype} tensor with fractions; expected whole numbers"
        wrong = got.long() != expected
    else:
        wrong = ~torch.isclose(got.double(), expected.double(), rtol=rtol, atol=atol)
    if not wrong.any():
        return None
    if sorted_equal(got, expected, atol):
        return "{yours} the right values in the wrong places: check the order"
    first = tuple(int(i) for i in torch.nonzero(wrong)[0])
    return (f"{{yours}} the wrong value at index {first}: {got[first].item():.6g} "
            f"({int(wrong.sum())} of {wrong.numel()} elements differ)")


def sorted_equal(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    """True when ``got`` holds the same values as ``expected`` in another order."""
    a, b = got.double().flatten().sort().values, expected.double().flatten().sort().values
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=1e-4))
