"""Train the toy Qwen2.5-VL on the shapes task, on a CPU, in about four minutes.

The model is the stock ``Qwen2_5_VLForConditionalGeneration`` built from
``configs/qwen2_5_vl_toy.json``. Four choices make it train fast:

- each step draws ``Recipe.scenes`` pictures and asks all three question types
  about each in one conversation (``encode.conversation``), so the picture and
  the system prompt are processed once for three answers; the first answer
  sees exactly the one-question prompt used at evaluation;
- the loss is the cross-entropy of the answer token only, over the 13 answer
  tokens of the task (the full 151,936-token softmax would cost as much as the
  rest of the step); evaluation still takes the argmax over the full vocabulary;
- the tied embedding / unembedding matrix stays at its random initialisation
  (std ``initializer_range``): 19M parameters the task does not need to move;
- weights start at ``initializer_range`` 0.08 (text) and 0.1 (vision), sized
  for these narrow layers, where the released 0.02 would shrink the signal.

Learning to look is a phase change: for ~600 steps the loss sits at the
answer prior, then the answer position's attention snaps onto the asked
object. Sparse scenes (1-3 objects) bring it on; a peak learning rate above
~5e-4 delays it.

>>> model = train(toy_config(), Recipe(steps=5))        # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from anatomy.toy.encode import answer_tokens, encode_conversations
from anatomy.toy.kernels import fast_training
from anatomy.toy.task import questions


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights, besides the config and the code."""

    seed: int = 0  # model initialisation and the stream of training pictures
    steps: int = 1400  # optimiser steps
    scenes: int = 32  # pictures per step; 3 questions each
    lr: float = 5e-4  # peak AdamW learning rate
    warmup: int = 30  # linear warm-up steps, then constant ...
    cooldown: float = 0.2  # ... until this fraction of the steps is left, then linear decay to zero
    weight_decay: float = 0.01  # on matrices only, not on norms and biases

    def __post_init__(self):
        for name, least in (("seed", 0), ("steps", 1), ("scenes", 1), ("warmup", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= least):
                raise ValueError(f"Recipe.{name}={value!r}; expected an integer >= {least}")
        if not self.lr > 0:
            raise ValueError(f"Recipe.lr={self.lr!r}; expected a positive learning rate")
        if not 0 <= self.cooldown <= 1:
            raise ValueError(f"Recipe.cooldown={self.cooldown!r}; expected a fraction of the steps in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def toy_config(attn_implementation: str = "sdpa") -> Qwen2_5_VLConfig:
    """The complete toy config (``configs/qwen2_5_vl_toy.json``): Qwen2.5-VL's classes at small sizes."""
    text = (resources.files("anatomy") / "configs" / "qwen2_5_vl_toy.json").read_text()
    config = Qwen2_5_VLConfig(**json.loads(text))
    config._attn_implementation = attn_implementation
    return config


def initial_model(config: Qwen2_5_VLConfig, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """The model before training: random weights from ``seed``, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied: the unembedding stays random too
    return model


def train(config: Qwen2_5_VLConfig, recipe: Recipe, processor, progress: bool = True):
    """Train a fresh toy model; same config, recipe, code and thread count -> same weights, bit for bit."""
    model = initial_model(config, recipe.seed).train()
    optimiser, schedule = _optimiser(model, recipe)
    answers = torch.tensor(sorted(answer_tokens(processor).values()))  # (13,)
    bar = tqdm(range(recipe.steps), desc="training the toy Qwen2.5-VL", disable=not progress, mininterval=5)
    with fast_training(model):
        for step in bar:
            batch = _batch(recipe, step, processor)
            logits = answer_logits(model, batch, answers)  # (scenes, 3, 13)
            loss = F.cross_entropy(logits.flatten(0, 1), torch.searchsorted(answers, batch["labels"]).flatten())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


def answer_logits(model, batch: dict, answers: torch.Tensor) -> torch.Tensor:
    """Logits of the ``answers`` token ids at every ``batch["answer_positions"]``, ``(B, K, len(answers))``."""
    inputs = {k: v for k, v in batch.items() if k not in ("answer_positions", "labels")}
    hidden = model.model(**inputs).last_hidden_state  # (B, L, hidden)
    picked = hidden.gather(1, batch["answer_positions"][..., None].expand(-1, -1, hidden.shape[-1]))  # (B, K, hidden)
    return picked @ model.lm_head.weight[answers].T


def _batch(recipe: Recipe, step: int, processor) -> dict:
    """Step ``step``'s conversations: ``recipe.scenes`` pictures, each asked all 3 question types."""
    first = step * recipe.scenes
    chats = [questions(recipe.seed, "train", first + i) for i in range(recipe.scenes)]
    return encode_conversations(chats, processor)


def _optimiser(model, recipe: Recipe):
    """AdamW (decay on matrices only); learning rate: warm-up, constant, linear cool-down."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimiser = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98))

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(recipe.warmup, 1))
        return min(warm, (recipe.steps - step) / max(recipe.cooldown * recipe.steps, 1))

    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
