"""Train the toy Qwen2.5-VL on the shapes task, on a CPU, in a few minutes.

The model is the stock ``Qwen2_5_VLForConditionalGeneration`` built from
``configs/qwen2_5_vl_toy.json``. What makes it train fast:

- each step draws ``Recipe.scenes`` pictures and asks all three question types
  about each in one conversation (``encode.conversation``), so the picture and
  the system prompt are processed once for three answers; the first answer
  sees exactly the one-question prompt used at evaluation;
- the loss is the cross-entropy of the answer token only, over the 13 answer
  tokens of the task (the full 151,936-token softmax would cost as much as the
  rest of the step); evaluation still takes the argmax over the full vocabulary;
- the tied embedding / unembedding matrix stays at its initial values, which
  ``embedding.frozen_embedding`` regenerates from the seed on any machine:
  19M parameters the task does not need to move, and that are never shipped;
- weights start at ``initializer_range`` 0.08 (text) and 0.1 (vision), sized
  for these narrow layers, where the released 0.02 would shrink the signal;
- exact shortcuts: batched vision windows and the patch embedding as one matmul
  (``anatomy.kernels.fast_vision``), rotary positions and windows computed once per
  layout (``kernels``).

Two stages. Learning to look is a phase change: for 600-1000 steps (it depends
on the seed) the loss sits near the answer prior, then the answer position's
attention snaps onto the asked object. Sparse scenes (1-3 objects) bring it
on; a peak learning rate above ~5e-4 delays it; so does teaching the model to
end its turn from the start (in four runs, looking began 300-800 steps later).
So stage 1 trains the answers alone until a validation check passes (every
question type at ``check_accuracy``). Stage 2, the cool-down, decays the
learning rate linearly to zero over ``cooldown`` steps and adds two targets:
``<|im_end|>`` after each answer (the answer token fed in, the turn's end as
the next token, scored against the answers and ``negatives`` random tokens of
the vocabulary), and a fourth question per picture, "where" about an object
whose shape repeats (only its colour tells it from its twins). In the shipped
run the model answered those already before the cool-down (``anatomy.toy.curve``
reads when each question type was learned).

>>> model = train(toy_config(), Recipe(max_steps=5), offline_processor())      # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from anatomy.kernels import fast_vision
from anatomy.model import TOY, shipped_config
from anatomy.toy.embedding import frozen_embedding
from anatomy.toy.encode import answer_tokens, encode_conversations, stop_token
from anatomy.toy.evaluate import WHERE_CASES, score
from anatomy.toy.kernels import Layouts
from anatomy.toy.task import questions, questions_and_repeated_where, sample


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights, besides the config and the code."""

    seed: int = 0  # model initialisation, frozen embedding and the stream of training pictures
    scenes: int = 26  # pictures per step; 3 questions each (4 in the cool-down)
    lr: float = 5e-4  # peak AdamW learning rate: linear warm-up, then constant until the check passes
    warmup: int = 30  # warm-up steps
    check_every: int = 100  # steps between checks on the validation split ...
    check_samples: int = 90  # ... of this many samples, a third of each question type ...
    check_accuracy: float = 0.85  # ... which pass when every type is answered at least this well
    # once a check passes: steps of linear decay of the learning rate to zero, then stop; the shipped toy had
    # 600, which left 2 of seeds 0-4 under 95% on "where" (benchmarks/RESULTS.md, Toy retraining)
    cooldown: int = 1200
    max_steps: int = 3000  # stop here if no check has passed by then
    weight_decay: float = 0.01  # on matrices only, not on norms and biases
    end_turn: bool = True  # cool-down: also train <|im_end|> as the token after each answer
    repeated_where: bool = True  # cool-down: a fourth question per picture, "where" about a repeated shape
    negatives: int = 1024  # random vocabulary tokens that <|im_end|> is scored against, drawn anew every step

    def __post_init__(self):
        for name, least in (("seed", 0), ("scenes", 1), ("warmup", 0), ("check_every", 1), ("check_samples", 3),
                            ("cooldown", 0), ("max_steps", 1), ("negatives", 0)):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ValueError(f"Recipe.{name}={value!r}; expected an integer >= {least}")
        if not self.lr > 0:
            raise ValueError(f"Recipe.lr={self.lr!r}; expected a positive learning rate")
        if not 0 <= self.check_accuracy <= 1:
            raise ValueError(f"Recipe.check_accuracy={self.check_accuracy!r}; expected a fraction in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Log:
    """What happened in training: one ``curve`` entry per validation check, and the steps taken.

    Each entry: ``step``, ``loss`` (mean training loss since the previous check), ``accuracy``
    (question type -> fraction), ``where_by_case``, ``stops`` (``<|im_end|>`` after the answer),
    ``ratios`` (target/distractor attention per cell of the answer position, one per layer),
    ``seconds`` since training began.
    """

    curve: list[dict] = field(default_factory=list)
    passed_at: int | None = None  # the step whose check passed, if one did
    steps: int = 0


def toy_config(attn_implementation: str = "sdpa") -> Qwen2_5_VLConfig:
    """The complete toy config (``configs/qwen2_5_vl_toy.json``): Qwen2.5-VL's classes at small sizes."""
    return shipped_config(TOY, attn_implementation)


def initial_model(config: Qwen2_5_VLConfig, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """The model before training: random weights from ``seed``, without touching the global RNG; the tied
    embedding / unembedding is ``frozen_embedding(seed)`` and stays as it is."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        embedding.copy_(frozen_embedding(seed, *embedding.shape, config.text_config.initializer_range))
    embedding.requires_grad_(False)  # tied: the unembedding stays as it is too
    return model


def train(config: Qwen2_5_VLConfig, recipe: Recipe, processor, progress: bool = True, log: Log | None = None):
    """Train a fresh toy model; same config, recipe, code and thread count -> same weights, bit for bit.

    Every ``check_every`` steps the model answers ``check_samples`` questions of the validation
    split (neither trained on nor used by ``evaluate``), and ``log`` (if given) records the check;
    once every question type passes ``check_accuracy`` the model has begun to look, and the
    cool-down (stage 2, see the module's docstring) runs ``cooldown`` steps, then training stops.
    When the model begins to look varies with the seed by hundreds of steps, so a fixed schedule
    would either waste time or stop some seeds too early. Interrupting it (Ctrl-C) raises
    ``KeyboardInterrupt``, nothing written.
    """
    log = Log() if log is None else log
    model = initial_model(config, recipe.seed).train()
    optimiser = _optimiser(model, recipe)
    targets = torch.tensor(sorted(answer_tokens(processor).values()))  # (13,)
    validation = [sample(recipe.seed, "valid", i) for i in range(recipe.check_samples)]
    layouts = Layouts(model)
    # the length is unknown until the check passes: no total (and no ETA) until then
    bar = tqdm(desc="training the toy Qwen2.5-VL (looking for the check)", disable=not progress, mininterval=5)
    stop, losses, start = recipe.max_steps, [], time.perf_counter()
    try:
        with fast_vision(model):
            for step in range(recipe.max_steps + recipe.cooldown):
                if step >= stop:
                    break
                for group in optimiser.param_groups:
                    group["lr"] = recipe.lr * _lr_factor(recipe, step, log.passed_at)
                loss = _loss(model, recipe, step, processor, targets, layouts, cooling=log.passed_at is not None)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                log.steps = step + 1
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                if (step + 1) % recipe.check_every == 0 or step + 1 == stop:
                    entry = check(model, processor, validation, step + 1, losses, time.perf_counter() - start)
                    log.curve.append(entry)
                    losses = []
                    if log.passed_at is None and min(entry["accuracy"].values()) >= recipe.check_accuracy:
                        log.passed_at = step + 1
                        stop = step + 1 + recipe.cooldown
                        bar.total = stop  # now known: the bar shows a fraction and an ETA
                        if recipe.cooldown:
                            bar.set_description("training the toy Qwen2.5-VL (cool-down)")
    finally:
        bar.close()  # ends the bar's line, also when interrupted
    return model.eval()


def check(model, processor, validation: list, step: int, losses: list[float], seconds: float) -> dict:
    """One ``Log.curve`` entry: ``score`` of the validation samples, the mean of ``losses``; model mode kept."""
    mode = model.training
    report = score(model.eval(), processor, validation)
    model.train(mode)
    return {
        "step": step,
        "loss": float(sum(losses) / len(losses)) if losses else math.nan,
        "accuracy": report.accuracy,
        "where_by_case": {case: report.where_by_case.get(case, math.nan) for case in WHERE_CASES},
        "stops": report.stops,
        "ratios": [float(r) for r in report.ratios],
        "seconds": round(seconds, 1),
    }


def _lr_factor(recipe: Recipe, step: int, passed_at: int | None) -> float:
    """Linear warm-up to 1, constant, then (after the check passed) linear decay to 0 over ``cooldown`` steps."""
    warm = min(1.0, (step + 1) / max(recipe.warmup, 1))
    if passed_at is None:
        return warm
    return min(warm, (passed_at + recipe.cooldown - step) / (recipe.cooldown + 1))


def _loss(model, recipe: Recipe, step: int, processor, targets: torch.Tensor, layouts, cooling: bool) -> torch.Tensor:
    """Step ``step``'s loss: cross-entropy of every answer over the 13 answers; in the cool-down (``cooling``),
    plus that of ``<|im_end|>`` after every answer (if ``recipe.end_turn``)."""
    end_turn = cooling and recipe.end_turn
    batch = _batch(recipe, step, processor, four=cooling and recipe.repeated_where, answered=end_turn)
    hidden = _hidden(batch, layouts)  # (B, L, hidden)
    picked = _at(hidden, batch["answer_positions"])  # (B, K, hidden)
    logits = picked @ model.lm_head.weight[targets].T  # (B, K, 13)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.searchsorted(targets, batch["labels"]).flatten())
    if not end_turn:
        return loss
    candidates = _stop_candidates(recipe, step, processor, targets, model.lm_head.weight.shape[0])  # (1 + 13 + n,)
    after = _at(hidden, batch["answer_positions"] + 1) @ model.lm_head.weight[candidates].T  # (B, K, candidates)
    return loss + F.cross_entropy(after.flatten(0, 1), torch.zeros(after.shape[0] * after.shape[1], dtype=torch.long))


def _stop_candidates(recipe: Recipe, step: int, processor, answers: torch.Tensor, vocab: int) -> torch.Tensor:
    """``<|im_end|>`` first, then the answers, then ``recipe.negatives`` other tokens drawn for this step."""
    stop = stop_token(processor)
    generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    drawn = torch.randint(vocab - 1, (recipe.negatives,), generator=generator)
    drawn = drawn + (drawn >= stop).long()  # never <|im_end|> itself
    return torch.cat([torch.tensor([stop]), answers, drawn])


def _hidden(batch: dict, layouts: Layouts) -> torch.Tensor:
    """The decoder's last hidden states ``(B, L, hidden)`` of ``layouts.model``, with the batch's rotary positions
    and vision windows precomputed by ``layouts``."""
    inputs = {k: v for k, v in batch.items() if k not in ("answer_positions", "labels")}
    return layouts.model(**inputs, **layouts(batch)).last_hidden_state


def _at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden`` ``(B, L, H)`` at ``positions`` ``(B, K)`` -> ``(B, K, H)``."""
    return hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))


def _batch(recipe: Recipe, step: int, processor, four: bool = False, answered: bool = False) -> dict:
    """Step ``step``'s conversations: ``recipe.scenes`` pictures, each asked all 3 question types (``four``:
    and a "where" about a repeated shape), ``answered``: the last answer appended."""
    first = step * recipe.scenes
    ask = questions_and_repeated_where if four else questions
    chats = [ask(recipe.seed, "train", first + i) for i in range(recipe.scenes)]
    return encode_conversations(chats, processor, answered=answered)


def _optimiser(model, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW (the fused kernel: one call for all parameters) with weight decay on matrices only; ``train``
    sets the learning rate of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), fused=True)
