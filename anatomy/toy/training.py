"""Train the toy Qwen2.5-VL on the shapes task, on a CPU, in about 3 minutes.

The model is the stock ``Qwen2_5_VLForConditionalGeneration`` built from
``configs/qwen2_5_vl_toy.json``. What makes it train fast:

- each step draws ``Recipe.scenes`` pictures and asks all three question types
  about each in one conversation (``encode.conversation``), so the picture and
  the system prompt are processed once for three answers; the first answer
  sees exactly the one-question prompt used at evaluation;
- the loss is the cross-entropy of the answer token only, over the 13 answer
  tokens of the task (the full 151,936-token softmax would cost as much as the
  rest of the step); evaluation still takes the argmax over the full
  vocabulary. The toy is not taught to end its turn with ``<|im_end|>``: the
  four runs we made with that second target began to look 300-800 steps
  later than the three without, and the one run to 2250 steps stayed at 93.5%
  on "where" questions; so after its one-word answer the toy goes on with
  noise until a token limit stops it;
- the tied embedding / unembedding matrix stays at its random initialisation
  (std ``initializer_range``): 19M parameters the task does not need to move;
- weights start at ``initializer_range`` 0.08 (text) and 0.1 (vision), sized
  for these narrow layers, where the released 0.02 would shrink the signal;
- exact shortcuts (``kernels``): batched vision windows, the patch embedding
  as one matmul, and rotary positions and windows computed once per layout;
- training stops once a validation check passes, plus a short cool-down.

Learning to look is a phase change: for 600-1000 steps (it depends on the
seed) the loss sits near the answer prior, then the answer position's
attention snaps onto the asked object. Sparse scenes (1-3 objects) bring it
on; a peak learning rate above ~5e-4 delays it. When it starts depends
little on the number of pictures per step, but what follows ("where" and
count questions reaching 85%, then the cool-down) needs pictures: seed 0
finished in 1500 steps with 32 pictures, 1550 with 26 (at 0.85 of the cost
per step), 2000 with 20 and 2500 with 16, whose "where" answers stayed at
87.5%.

>>> model = train(toy_config(), Recipe(max_steps=5), offline_processor())      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from anatomy.model import TOY, shipped_config
from anatomy.toy.encode import answer_tokens, encode, encode_conversations
from anatomy.toy.kernels import Layouts, fast_training
from anatomy.toy.task import QUESTION_TYPES, questions, sample


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights, besides the config and the code."""

    seed: int = 0  # model initialisation and the stream of training pictures
    scenes: int = 26  # pictures per step; 3 questions each
    lr: float = 5e-4  # peak AdamW learning rate: linear warm-up, then constant until the check passes
    warmup: int = 30  # warm-up steps
    check_every: int = 100  # steps between checks on the validation split ...
    check_samples: int = 90  # ... of this many samples, a third of each question type ...
    check_accuracy: float = 0.85  # ... which pass when every type is answered at least this well
    cooldown: int = 250  # once a check passes: steps of linear decay of the learning rate to zero, then stop
    max_steps: int = 2400  # stop here, passed or not
    weight_decay: float = 0.01  # on matrices only, not on norms and biases

    def __post_init__(self):
        for name, least in (("seed", 0), ("scenes", 1), ("warmup", 0), ("check_every", 1),
                            ("check_samples", 3), ("cooldown", 0), ("max_steps", 1)):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= least):
                raise ValueError(f"Recipe.{name}={value!r}; expected an integer >= {least}")
        if not self.lr > 0:
            raise ValueError(f"Recipe.lr={self.lr!r}; expected a positive learning rate")
        if not 0 <= self.check_accuracy <= 1:
            raise ValueError(f"Recipe.check_accuracy={self.check_accuracy!r}; expected a fraction in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Log:
    """What happened in training: the validation checks ``(step, accuracy per type)`` and the steps taken."""

    checks: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    passed_at: int | None = None  # the step whose check passed, if one did
    steps: int = 0


def toy_config(attn_implementation: str = "sdpa") -> Qwen2_5_VLConfig:
    """The complete toy config (``configs/qwen2_5_vl_toy.json``): Qwen2.5-VL's classes at small sizes."""
    return shipped_config(TOY, attn_implementation)


def initial_model(config: Qwen2_5_VLConfig, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """The model before training: random weights from ``seed``, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied: the unembedding stays random too
    return model


def train(config: Qwen2_5_VLConfig, recipe: Recipe, processor, progress: bool = True, log: Log | None = None):
    """Train a fresh toy model; same config, recipe, code and thread count -> same weights, bit for bit.

    Every ``check_every`` steps the model answers ``check_samples`` questions of the validation
    split (neither trained on nor used by ``evaluate``); once every question type passes
    ``check_accuracy``, the model has begun to look, and the learning rate decays to zero over
    ``cooldown`` steps, then training stops: at a constant rate, "where" answers hover around
    85-90% for hundreds of steps; the decay takes them above 95%. When the model begins to look
    varies with the seed by hundreds of steps, so a fixed schedule would either waste time or
    stop some seeds too early. ``log`` (if given) records the checks.
    """
    log = Log() if log is None else log
    model = initial_model(config, recipe.seed).train()
    optimiser = _optimiser(model, recipe)
    targets = torch.tensor(sorted(answer_tokens(processor).values()))  # (13,)
    validation = validation_set(recipe, processor)
    layouts = Layouts(model)
    bar = tqdm(total=recipe.max_steps, desc="training the toy Qwen2.5-VL", disable=not progress, mininterval=5)
    stop = recipe.max_steps
    with fast_training(model):
        for step in range(recipe.max_steps):
            if step >= stop:
                break
            for group in optimiser.param_groups:
                group["lr"] = recipe.lr * _lr_factor(recipe, step, log.passed_at)
            batch = _batch(recipe, step, processor)
            logits = answer_logits(model, batch, targets, layouts)  # (scenes, 3, 13)
            loss = F.cross_entropy(logits.flatten(0, 1), torch.searchsorted(targets, batch["labels"]).flatten())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            log.steps = step + 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if log.passed_at is None and (step + 1) % recipe.check_every == 0:
                accuracy = validation_accuracy(model, validation)
                log.checks.append((step + 1, accuracy))
                if min(accuracy.values()) >= recipe.check_accuracy:
                    log.passed_at = step + 1
                    stop = min(recipe.max_steps, step + 1 + recipe.cooldown)
    bar.close()
    return model.eval()


def validation_set(recipe: Recipe, processor) -> dict:
    """The check's first ``check_samples`` questions of the validation split, encoded once for every check:
    ``encode``'s inputs and ``labels``, and ``kinds``, each row's question type."""
    samples = [sample(recipe.seed, "valid", i) for i in range(recipe.check_samples)]
    return {**encode(samples, processor), "kinds": [s.kind for s in samples]}


def validation_accuracy(model, validation: dict) -> dict[str, float]:
    """Accuracy per question type on a ``validation_set`` (argmax over the full vocabulary)."""
    inputs = {k: v for k, v in validation.items() if k not in ("labels", "kinds")}
    mode = model.training
    model.eval()
    with torch.no_grad():
        hits = model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1) == validation["labels"]
    model.train(mode)
    kinds = validation["kinds"]
    return {kind: hits[[k == kind for k in kinds]].float().mean().item() for kind in QUESTION_TYPES}


def _lr_factor(recipe: Recipe, step: int, passed_at: int | None) -> float:
    """Linear warm-up to 1, constant, then (after the check passed) linear decay to 0 over ``cooldown`` steps."""
    warm = min(1.0, (step + 1) / max(recipe.warmup, 1))
    if passed_at is None:
        return warm
    return min(warm, (passed_at + recipe.cooldown - step) / (recipe.cooldown + 1))


def answer_logits(model, batch: dict, answers: torch.Tensor, layouts: Layouts) -> torch.Tensor:
    """Logits of the ``answers`` token ids at every ``batch["answer_positions"]``, ``(B, K, len(answers))``;
    ``layouts`` passes the batch's rotary positions and vision windows precomputed."""
    inputs = {k: v for k, v in batch.items() if k not in ("answer_positions", "labels")}
    hidden = model.model(**inputs, **layouts(batch)).last_hidden_state  # (B, L, hidden)
    picked = hidden.gather(1, batch["answer_positions"][..., None].expand(-1, -1, hidden.shape[-1]))  # (B, K, hidden)
    return picked @ model.lm_head.weight[answers].T


def _batch(recipe: Recipe, step: int, processor) -> dict:
    """Step ``step``'s conversations: ``recipe.scenes`` pictures, each asked all 3 question types."""
    first = step * recipe.scenes
    chats = [questions(recipe.seed, "train", first + i) for i in range(recipe.scenes)]
    return encode_conversations(chats, processor)


def _optimiser(model, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW (the fused kernel: one call for all parameters) with weight decay on matrices only; ``train``
    sets the learning rate of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), fused=True)
