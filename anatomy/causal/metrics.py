"""What a run is worth: a metric reads one number per prompt from the logits at its end.

>>> ld = logit_diff(spec, "red", "blue")             # logit('red') - logit('blue'), the next token
>>> p = probability(spec, "red")                     # softmax probability of 'red'
>>> lp = log_prob(spec, "a red circle")              # log p('a') + log p(' red' | 'a') + log p(' circle' | ...)
>>> mine = as_metric(lambda logits: logits[:, 9707], "logit('Hello')")      # any (B, vocab) -> (B,)
>>> values, greedy = measure(spec, prompt, ld)        # (B,) metric values, (B,) greedy next-token ids

An answer is the text the model says right after the prompt, which ends with
``<|im_start|>assistant\\n``: ``"red"``, not ``" red"``. Give one text for every prompt, or a
list with one per row (row i of a batch, pair i of a ``Contrast``). ``logit_diff`` and
``probability`` read one token and refuse a longer answer, showing its tokens; an empty answer
is refused by all.

A metric reads the last positions of the logits it is given: ``(B, S, vocab)`` (or ``(B, vocab)``,
one position). Next-token metrics read the last one. ``log_prob`` reads the last n, n the answer's
token count: teacher forcing, ``extend`` appends the answer's first n - 1 tokens to the prompt, so
that position j of those n predicts answer token j; the log-probabilities are summed. Rows with
shorter answers are padded on the right (masked, and after every position they read).

Whatever it computes, a metric must return a ``(B,)`` tensor without NaN; anything else is one
``ValueError`` naming the metric, what it returned, and what was expected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from anatomy.model import TEXT, unwrap
from anatomy.processor import token_texts


@dataclass(frozen=True)
class Answer:
    """Answer texts and their token ids: one answer for every row, or one per row."""

    texts: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]

    def for_rows(self, rows: Sequence[int]) -> list[tuple[int, ...]]:
        """The token ids of each row's answer (row indices into a per-row list)."""
        if len(self.ids) == 1:
            return [self.ids[0]] * len(rows)
        bad = [r for r in rows if not 0 <= r < len(self.ids)]
        if bad:
            raise ValueError(f"row {bad[0]} has no answer: {len(self.ids)} answers were given, {list(self.texts)}")
        return [self.ids[r] for r in rows]

    def padded(self, rows: Sequence[int], device) -> torch.Tensor:
        """``(B, n)`` token ids, n the longest answer's length, -1 after each shorter one."""
        ids = self.for_rows(rows)
        width = max(len(i) for i in ids)
        return torch.tensor([list(i) + [-1] * (width - len(i)) for i in ids], device=device)


def _answer(spec, text, one_token: bool, metric: str) -> Answer:
    """``text`` (a string, or one per row) as token ids; refuses an empty answer, and for ``one_token`` a longer one."""
    texts = (text,) if isinstance(text, str) else tuple(text) if isinstance(text, (list, tuple)) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"answer {text!r}: expected a string, or a non-empty list of strings (one per row)")
    tokenizer = spec.processor.tokenizer
    ids = []
    for t in texts:
        if not t:
            raise ValueError(f"answer {t!r} is empty; expected the text the model should say next, e.g. 'red'")
        tokens = tuple(tokenizer(t, add_special_tokens=False).input_ids)
        if one_token and len(tokens) != 1:
            raise ValueError(f"{metric} needs a one-token answer; {t!r} is {len(tokens)} tokens "
                             f"{token_texts(tokenizer, tokens)}: use log_prob for the whole answer, or give one token")
        ids.append(tokens)
    return Answer(texts, tuple(ids))


@dataclass(frozen=True)
class Metric:
    """A number per prompt from its logits: ``metric(logits, rows=None) -> (B,)``.

    Attributes:
        name: what the metric is, for printing.
        read: ``(logits (B, n, vocab) float32, *answer ids (B, n)) -> (B,)``, n = ``span``.
        answers: the answers it reads, as token ids (``Answer``).
        forced: teacher forcing: the first answer's tokens are fed after the prompt (``extend``).
        copies_logits: whether ``read`` makes a vocabulary-wide float32 tensor of its own (a softmax); the memory a
            plan counts for the logits (``anatomy.causal.cost.decoder_row_bytes``). True for a function of the
            user's, which may.
    """

    name: str
    read: Callable[..., torch.Tensor]
    answers: tuple[Answer, ...] = ()
    forced: bool = False
    copies_logits: bool = True

    def check_rows(self, count: int) -> None:
        """Refuse per-row answers whose number is not ``count``, the rows (or pairs) measured."""
        for a in self.answers:
            if len(a.ids) not in (1, count):
                raise ValueError(f"{self.name}: {len(a.ids)} answers {list(a.texts)} for {count} rows; "
                                 f"expected one answer for all, or one per row")  # fmt: skip

    def _rows(self, rows, batch: int) -> list[int]:
        if rows is None:
            self.check_rows(batch)
            return list(range(batch))
        rows = list(rows)
        if len(rows) != batch:
            raise ValueError(f"{self.name}: rows={rows} name {len(rows)} rows; the batch has {batch}")
        return rows

    def span(self, rows, batch: int) -> int:
        """How many positions, from the end, the metric reads: 1, or the longest forced answer's length."""
        return max(len(ids) for ids in self.answers[0].for_rows(self._rows(rows, batch))) if self.forced else 1

    def extend(self, batch: Mapping, rows=None) -> dict:
        """``batch`` with each row's answer but its last token appended (teacher forcing); as it is otherwise."""
        if not self.forced:
            return dict(batch)
        rows = self._rows(rows, len(batch["input_ids"]))
        ids = self.answers[0].padded(rows, batch["input_ids"].device)[:, :-1]  # (B, n - 1), -1 after short answers
        appended = {
            "input_ids": ids.clamp(min=0),  # padding: any token, masked and after every position read
            "attention_mask": ids >= 0,
            "mm_token_type_ids": torch.full_like(ids, TEXT),
        }
        extended = {k: torch.cat([batch[k], v.to(batch[k].dtype)], 1) for k, v in appended.items() if k in batch}
        return {**batch, **extended}

    def __call__(self, logits: torch.Tensor, rows=None) -> torch.Tensor:
        """``(B,)`` from ``logits`` ``(B, S, vocab)`` or ``(B, vocab)``; ``rows``: which row's answer each row takes."""
        logits = logits[:, None] if logits.ndim == 2 else logits  # (B, S, vocab)
        rows = self._rows(rows, len(logits))
        span = self.span(rows, len(logits))
        if logits.shape[1] < span:
            raise ValueError(f"{self.name} reads the last {span} positions, where the answer's tokens are predicted; "
                             f"the logits have {logits.shape[1]}: run the model on metric.extend(batch)")  # fmt: skip
        ids = [a.padded(rows, logits.device) for a in self.answers]  # each (B, n)
        return self._checked(self.read(logits[:, -span:].float(), *ids), len(logits))

    def _checked(self, value, batch: int) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.shape != (batch,):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"metric {self.name!r} returned {shape}; expected a tensor of shape ({batch},), "
                             f"one number per prompt")  # fmt: skip
        if value.isnan().any():
            rows = value.isnan().nonzero().squeeze(1).tolist()
            raise ValueError(f"metric {self.name!r} returned NaN for rows {rows}; expected a number per prompt")
        return value


def _pick(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, n)``: ``logits[b, j, ids[b, j]]`` (index 0 where ids are -1 padding)."""
    return logits.gather(-1, ids.clamp(min=0)[..., None])[..., 0]


def _logit_diff(logits: torch.Tensor, good: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    return (_pick(logits, good) - _pick(logits, bad))[:, 0]  # (B,)


def _probability(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return _pick(logits.softmax(-1), ids)[:, 0]


def _log_prob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    picked = _pick(logits.log_softmax(-1), ids)  # (B, n): log p(answer token j | prompt, tokens before j)
    return torch.where(ids >= 0, picked, 0.0).sum(-1)


def logit_diff(spec, good, bad) -> Metric:
    """``logit(good) - logit(bad)`` for the next token: each answer one token (a string, or one per row)."""
    answers = _answer(spec, good, True, "logit_diff"), _answer(spec, bad, True, "logit_diff")
    return Metric(f"logit({_label(answers[0])}) - logit({_label(answers[1])})", _logit_diff, answers,
                  copies_logits=False)  # fmt: skip


def probability(spec, text) -> Metric:
    """The softmax probability of ``text`` (one token) as the next token."""
    chosen = _answer(spec, text, True, "probability")
    return Metric(f"p({_label(chosen)})", _probability, (chosen,))


def log_prob(spec, text) -> Metric:
    """The log-probability of the whole answer ``text`` after the prompt, teacher-forced: summed over its tokens."""
    chosen = _answer(spec, text, False, "log_prob")
    return Metric(f"log p({_label(chosen)})", _log_prob, (chosen,), forced=True)


def _next(fn: Callable, logits: torch.Tensor) -> torch.Tensor:
    return fn(logits[:, -1])  # (B, vocab) at the prompt's last position


def as_metric(fn, name: str | None = None) -> Metric:
    """Any function of the next-token logits ``(B, vocab) -> (B,)`` as a ``Metric`` (a ``Metric`` stays as it is)."""
    if isinstance(fn, Metric):
        return fn
    if not callable(fn):
        raise TypeError(f"metric {fn!r} is not callable; expected a Metric or a function (B, vocab) logits -> (B,)")
    return Metric(name or getattr(fn, "__name__", "metric"), functools.partial(_next, fn))


def measure(spec, batch: Mapping, metric, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over ``batch`` (answers appended if teacher-forced): ``(B,)`` metric values and
    ``(B,)`` greedy next-token ids after the prompt. ``rows``: whose answers the rows take (default: in order)."""
    metric = as_metric(metric)
    size = len(batch["input_ids"])
    inputs, span = metric.extend(batch, rows), metric.span(rows, size)
    with torch.no_grad():
        logits = unwrap(spec)(**inputs, logits_to_keep=span, use_cache=False).logits  # (B, span, vocab)
    return metric(logits, rows), logits[:, 0].argmax(-1)


def _label(chosen: Answer) -> str:
    """``'red'``, or the per-row answers: ``['red', 'blue', 'green', ...]``."""
    texts = chosen.texts
    return repr(texts[0]) if len(texts) == 1 else f"[{', '.join(map(repr, texts[:3]))}{', ...' * (len(texts) > 3)}]"
