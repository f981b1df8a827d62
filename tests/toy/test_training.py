"""The toy model: its task, its inputs, its cache, its training, and the shipped toy's evidence.

The shipped toy itself (hash, answers, turn ending, threads) is tested in ``tests/toy/test_shipped.py``;
the cache's faults in ``tests/toy/test_cache_faults.py``.
"""

import numpy as np
import pytest
import torch

from anatomy.processor import offline_processor
from anatomy.toy import CACHE_ENV, CacheError, Recipe, cache_dir, load_toy, toy_config, train, untrained_toy
from anatomy.toy.cache import MANIFEST, verify
from anatomy.toy.encode import (
    answer_token,
    conversation,
    encode,
    encode_conversations,
    prompt_text,
)
from anatomy.toy.evaluate import evaluate, region_attention, region_map
from anatomy.toy.load import ensure_trained
from anatomy.toy.shapes import BACKGROUND_RAMP, CELL, GRID, SHAPES, background
from anatomy.toy.task import ANSWERS, QUESTION_TYPES, Scene, Thing, questions, sample
from anatomy.toy.weights import SHIPPED, write_model

# two steps: the check after step 1 passes (any accuracy does), then one cool-down step (4 questions, <|im_end|>)
TINY_RECIPE = Recipe(scenes=2, warmup=1, check_every=1, check_samples=3, check_accuracy=0.0, cooldown=1, max_steps=5)


@pytest.fixture(scope="module")
def processor():
    return offline_processor()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


def test_samples_are_a_function_of_seed_split_index():
    assert sample(0, "train", 7) == sample(0, "train", 7)
    assert np.array_equal(sample(0, "train", 7).scene.pixels(), sample(0, "train", 7).scene.pixels())
    assert sample(0, "train", 7) != sample(1, "train", 7)
    assert sample(0, "train", 7) != sample(0, "test", 7)
    assert [sample(0, "test", i).kind for i in range(6)] == list(QUESTION_TYPES) * 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split='dev'"):
        sample(0, "dev", 0)
    with pytest.raises(ValueError, match="index=-1"):
        sample(0, "train", -1)


def test_questions_are_well_posed():
    for i in range(300):
        for q in questions(0, "train", i):
            things = q.scene.things
            shape = things[q.target[0]].shape
            assert len({t.colour for t in things}) == len(things)  # every object its own colour
            assert len({(t.row, t.col) for t in things}) == len(things)  # and its own cell
            assert shape in q.question and q.answer in ANSWERS[q.kind]
            if q.kind == "count":
                assert q.target == tuple(j for j, t in enumerate(things) if t.shape == shape)
                assert q.answer == str(len(q.target))
            elif q.kind == "colour":
                assert len(q.target) == 1 and sum(t.shape == shape for t in things) == 1
            else:  # where: named by colour (unique) and shape
                assert len(q.target) == 1 and things[q.target[0]].colour in q.question


@pytest.mark.parametrize("kind", QUESTION_TYPES)
def test_every_answer_is_the_one_token_the_processor_produces(processor, kind):
    for answer in ANSWERS[kind]:
        prompt = prompt_text(processor, "How many circles are there?")
        ids = processor.tokenizer(prompt + answer + "<|im_end|>").input_ids
        assert ids[len(processor.tokenizer(prompt).input_ids) :] == [answer_token(processor, answer), 151645]


def test_each_object_stays_inside_its_cell():
    for shape in SHAPES:
        for dy, dx in [(-2, -2), (2, 2), (-2, 2)]:
            pixels = Scene((Thing(shape, "red", 1, 2, (dy, dx)),)).pixels()
            changed = np.argwhere((pixels != background()).any(-1))
            rows, cols = changed[:, 0] // CELL, changed[:, 1] // CELL
            assert len(changed) > 100 and set(rows) == {1} and set(cols) == {2}


def test_a_cell_is_exactly_one_merged_image_token(processor):
    """Against the real processor: an object in cell (r, c) changes the 4 patches of token r * 4 + c only."""
    empty = processor.image_processor(images=[background().copy()], return_tensors="pt")["pixel_values"]
    for row, col in [(0, 0), (1, 3), (3, 2)]:
        picture = Scene((Thing("square", "blue", row, col),)).pixels()
        patches = processor.image_processor(images=[picture], return_tensors="pt")["pixel_values"]
        changed = (patches != empty).any(-1).nonzero().flatten() // 4  # 4 patches per merged token
        assert set(changed.tolist()) == {row * GRID + col}


def test_region_map_follows_the_cells():
    q = sample(0, "test", 2)  # a count question
    regions = region_map(q).reshape(GRID, GRID)
    for i, t in enumerate(q.scene.things):
        assert regions[t.row, t.col] == (0 if i in q.target else 1)
    assert (regions == 2).sum() == GRID * GRID - len(q.scene.things)


def test_background_ramps_right_and_down():
    picture = background().astype(int)
    assert (picture[0, 0] == 255).all()
    assert picture[0, -1, 0] == 255 - BACKGROUND_RAMP and picture[-1, 0, 1] == 255 - BACKGROUND_RAMP


def test_encode_matches_the_processor(processor):
    samples = [sample(0, "train", i) for i in range(4)]
    texts = [prompt_text(processor, s.question) for s in samples]
    pictures = [s.scene.pixels() for s in samples]
    reference = processor(text=texts, images=pictures, padding=True, padding_side="left", return_tensors="pt")
    ours = encode(samples, processor)
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key


def test_conversations_match_the_processor(processor):
    chats = [questions(0, "train", i) for i in range(3)]
    texts = [processor.apply_chat_template(conversation(c), add_generation_prompt=True, tokenize=False) for c in chats]
    pictures = [c[0].scene.pixels() for c in chats]
    reference = processor(text=texts, images=pictures, padding=True, padding_side="left", return_tensors="pt")
    ours = encode_conversations(chats, processor)
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key
    after = ours["input_ids"].gather(1, (ours["answer_positions"][:, :-1] + 1))  # each target sits right after
    assert torch.equal(after, ours["labels"][:, :-1])


def test_short_training_is_reproducible_bit_for_bit(processor):
    first = train(toy_config(), TINY_RECIPE, processor, progress=False).state_dict()
    second = train(toy_config(), TINY_RECIPE, processor, progress=False).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third) for k, third in _initial_state().items())


def test_layouts_give_the_stock_positions_logits_and_gradients(processor):
    """Precomputed layouts: the rotary positions equal get_rope_index on the padded batch, and hidden
    states and every gradient equal the stock forward's, bit for bit; the cache serves repeated layouts."""
    from anatomy.toy.kernels import Layouts
    from anatomy.toy.training import initial_model

    model = initial_model(toy_config(), 0).train()
    batch = encode([sample(0, "valid", i) for i in range(6)], processor)  # prompts of different lengths
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    layouts = Layouts(model)
    reference = model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )[0]  # fmt: skip
    assert (batch["attention_mask"] == 0).any()  # left padding is exercised
    assert torch.equal(layouts(batch)["position_ids"], reference)

    def run(extra):
        model.zero_grad()
        hidden = model.model(**inputs, **extra).last_hidden_state
        hidden.square().sum().backward()
        return hidden.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    stock, fast = run({}), run(layouts(batch))
    assert torch.equal(fast[0], stock[0])
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(fast[1], stock[1]))
    kinds = {tuple(row[keep.bool()].tolist()) for row, keep in zip(batch["mm_token_type_ids"], batch["attention_mask"])}
    layouts(batch)
    assert len(layouts.rows) == len(kinds) and len(layouts.vision) == 1
    with pytest.raises(ValueError, match="one picture per row"):
        layouts({**batch, "image_grid_thw": batch["image_grid_thw"][:-1]})


def test_training_stops_a_cooldown_after_the_check_passes(processor):
    from anatomy.toy.training import Log

    log = Log()
    train(toy_config(), TINY_RECIPE, processor, progress=False, log=log)
    assert log.passed_at == 1 and log.steps == 2 and [entry["step"] for entry in log.curve] == [1, 2]
    never = Log()
    train(toy_config(), Recipe(scenes=2, check_every=2, check_samples=3, check_accuracy=1.0, max_steps=4),
          processor, progress=False, log=never)  # fmt: skip
    assert never.passed_at is None and never.steps == 4 and [entry["step"] for entry in never.curve] == [2, 4]


def test_a_check_scores_the_processor_path_answer(processor):
    """A check's accuracy equals the full-vocabulary argmax on inputs made by the processor itself."""
    from anatomy.toy.training import check, initial_model

    model = initial_model(toy_config(), 0).train()
    with torch.no_grad():  # make the untrained model answer right sometimes: bias its tied embedding
        model.get_input_embeddings().weight[answer_token(processor, "red")] *= 40
    samples = [sample(0, "valid", i) for i in range(6)]
    texts = [prompt_text(processor, s.question) for s in samples]
    inputs = processor(text=texts, images=[s.scene.pixels() for s in samples], padding=True,
                       padding_side="left", return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        answers = model.eval()(**inputs).logits[:, -1].argmax(-1)
    model.train()
    expected = {
        kind: np.mean([int(a) == answer_token(processor, s.answer) for a, s in zip(answers, samples) if s.kind == kind])
        for kind in QUESTION_TYPES
    }
    entry = check(model, processor, samples, step=7, losses=[2.0, 1.0], seconds=1.0)
    assert entry["accuracy"] == pytest.approx(expected) and entry["step"] == 7 and entry["loss"] == 1.5
    assert len(entry["ratios"]) == toy_config().text_config.num_hidden_layers
    assert model.training  # left in the mode it was in


def _initial_state():
    from anatomy.toy.training import initial_model

    return initial_model(toy_config(), TINY_RECIPE.seed).state_dict()


def test_cache_is_written_whole_then_loaded_verified(cache):
    directory = ensure_trained(TINY_RECIPE, progress=False)
    spec = load_toy(recipe=TINY_RECIPE)
    assert directory == cache_dir(TINY_RECIPE) and directory.parent == cache and spec.kind == "toy"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [directory.name]
    manifest = verify(directory)
    assert sorted(manifest["files"]) == ["curve.json", "model.safetensors"] and MANIFEST not in manifest["files"]
    reference = train(toy_config(), TINY_RECIPE, offline_processor(), progress=False)  # same threads: same bits
    assert all(torch.equal(a, b) for a, b in zip(spec.model.state_dict().values(), reference.state_dict().values()))


def test_a_corrupted_cache_is_detected_and_retrained(cache):
    ensure_trained(TINY_RECIPE, progress=False)
    weights = cache_dir(TINY_RECIPE) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="does not match its sha256"):
        verify(cache_dir(TINY_RECIPE))
    with pytest.warns(UserWarning, match="retraining") as caught:
        ensure_trained(TINY_RECIPE, progress=False)
    assert caught[0].filename == __file__  # the warning names the caller's line, not one of the package
    verify(cache_dir(TINY_RECIPE))
    aside = [p.name for p in cache.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and aside[0].startswith(cache_dir(TINY_RECIPE).name)


def test_a_cache_without_manifest_is_not_a_cache(cache):
    directory = cache_dir(TINY_RECIPE)
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"half")
    with pytest.raises(CacheError, match="no manifest.json"):
        verify(directory)


def test_writing_over_a_finished_model_swaps_it_whole(cache, processor):
    from anatomy.toy.training import Log

    model = train(toy_config(), TINY_RECIPE, processor, progress=False)
    first = write_model(model, cache_dir(TINY_RECIPE), TINY_RECIPE, Log())
    with torch.no_grad():
        next(model.model.visual.parameters()).add_(1.0)
    second = write_model(model, cache_dir(TINY_RECIPE), TINY_RECIPE, Log())
    assert first["files"]["model.safetensors"] != second["files"]["model.safetensors"]
    assert verify(cache_dir(TINY_RECIPE))["files"] == second["files"]
    assert sorted(p.name for p in cache.iterdir()) == [cache_dir(TINY_RECIPE).name]


def test_the_shipped_toy_answers_and_looks_at_the_target():
    report = evaluate(load_toy(), n=300)
    assert min(report.accuracy.values()) >= 0.98, report.accuracy
    assert report.where_by_case["shape repeated"] >= 0.98, report.where_by_case
    assert report.stops >= 0.95, report.stops
    assert report.ratios.max() >= 5, report.ratios


def test_where_accuracy_by_case_counts_the_answers_directly():
    """The split of "where" accuracy by whether the named shape repeats, against a direct count of
    the model's full-vocabulary argmax answers; the two cases together give the type's accuracy."""
    from anatomy.toy.evaluate import WHERE_CASES, where_case

    spec = load_toy()
    report = evaluate(spec, n=150)
    samples = [s for s in (sample(0, "test", i) for i in range(150)) if s.kind == "where"]
    batch = encode(samples, spec.processor)
    labels = batch.pop("labels")
    with torch.no_grad():
        hits = (spec.model(**batch, logits_to_keep=1).logits[:, -1].argmax(-1) == labels).numpy()
    cases = np.array([where_case(s) for s in samples])
    assert set(cases) == set(WHERE_CASES)
    for case in WHERE_CASES:
        assert report.where_by_case[case] == pytest.approx(hits[cases == case].mean())
    assert report.accuracy["where"] == pytest.approx(hits.mean())
    assert where_case(sample(0, "test", 0)) is None  # a colour question


def test_region_attention_divides_by_area():
    """All of the last position's attention on one target cell -> target per cell 1, the rest 0."""
    q = sample(0, "test", 2)
    config = toy_config()
    length = 20
    ids = torch.zeros(1, length, dtype=torch.long)
    ids[0, 2:18] = config.image_token_id  # 16 image tokens at positions 2..17
    first = q.scene.things[q.target[0]]
    weights = torch.zeros(1, 2, length, length)
    weights[0, :, -1, 2 + first.row * GRID + first.col] = 1.0
    shares = region_attention([weights], ids, [q], config)  # (layers, B, 3)
    assert np.allclose(shares[0, 0], [1 / len(q.target), 0, 0])


def test_main_toy_path_prints_the_shipped_or_the_cache_directory(cache, capsys):
    from anatomy.toy import main_toy

    assert main_toy(["path", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(cache_dir(Recipe(seed=3)))
    assert main_toy(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(SHIPPED)
    with pytest.raises(SystemExit):
        main_toy(["fly"])


def _eager_output(batch):
    """The untrained toy's output with eager attention and ``output_attentions``: the reference."""
    spec = untrained_toy()
    spec.model.set_attn_implementation("eager")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return spec.model(**inputs, output_attentions=True)


def test_report_by_kind_averages_its_own_samples():
    """Each question type's (layers, 3) average equals the regions of that type's samples alone."""
    spec = untrained_toy()
    report = evaluate(spec, n=6, batch_size=4)
    samples = [sample(0, "test", i) for i in range(6)]
    for kind in QUESTION_TYPES:
        alone = [s for s in samples if s.kind == kind]
        batch = encode(alone, spec.processor)
        out = _eager_output(batch)
        expected = region_attention(out.attentions, batch["input_ids"], alone, spec.config).mean(axis=1)
        assert np.allclose(report.per_area_by_kind[kind], expected, atol=1e-6)
        assert np.allclose(report.ratios_by_kind()[kind], expected[:, 0] / expected[:, 1], atol=1e-5)


def test_looking_figure_draws_eager_attention_and_the_model_answer():
    from anatomy.toy.figures import _answer_attention, looking_figure

    spec = untrained_toy()
    s = sample(0, "test", 0)
    cells, answer = _answer_attention(spec, s, layer=1)
    batch = encode([s], spec.processor)
    out = _eager_output(batch)
    row = out.attentions[1][0, :, -1].mean(0)  # heads averaged, last position
    expected = row[batch["input_ids"][0] == spec.config.image_token_id].view(GRID, GRID)
    assert np.allclose(cells, expected.numpy(), atol=1e-6)
    assert answer == spec.processor.tokenizer.decode(int(out.logits[0, -1].argmax()))
    figure = looking_figure(spec, [s, sample(0, "test", 1)], columns=2)
    assert figure.get_suptitle().startswith("toy (untrained): ")  # the title names the model drawn
    grid, scale = figure.subfigs  # the panels, and the colour bar they share
    assert len(grid.subfigs) == 2 and all(len(panel.axes) == 2 for panel in grid.subfigs)  # picture, map
    maps = [panel.axes[1].images[0] for panel in grid.subfigs]
    largest = max(float(m.get_array().max()) for m in maps)
    assert all(m.get_clim() == (0, largest) for m in maps) and len(scale.axes) == 1  # one scale for all maps
    shared = looking_figure(spec, [s], vmax=0.5).subfigs[0].subfigs[0].axes[1].images[0]
    assert shared.get_clim() == (0, 0.5)  # another model's scale, when asked


def test_grounding_figure_draws_the_report():
    from anatomy.toy.evaluate import Report
    from anatomy.toy.figures import grounding_figure

    per_area = np.array([[0.3, 0.1, 0.05], [0.6, 0.2, 0.1]])
    report = Report({"colour": 1.0}, per_area, 10, {"colour": per_area}, 1.0, {})
    figure = grounding_figure({"a": report})
    heights = sorted(p.get_height() for p in figure.axes[0].patches)
    assert np.allclose(heights, sorted(per_area.reshape(-1)))
    with pytest.raises(ValueError, match="at least one report"):
        grounding_figure({})


def test_anatomy_load_toy_passes_the_seed_as_the_recipe(monkeypatch):
    import anatomy
    import anatomy.toy

    calls = []
    monkeypatch.setattr(anatomy.toy, "load_toy", lambda *args, **kwargs: calls.append((args, kwargs)) or "loaded")
    assert anatomy.load("toy", seed=5, attn_implementation="eager") == "loaded"
    assert anatomy.load("toy") == "loaded"
    assert calls == [((torch.float32, None, "eager"), {"recipe": Recipe(seed=5)}),
                     ((torch.float32, None, "sdpa"), {"recipe": None})]  # fmt: skip


def test_python_m_anatomy_toy_reaches_the_toy_commands(cache, capsys):
    from anatomy.__main__ import main

    assert main(["toy", "path", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(cache_dir(Recipe()))
