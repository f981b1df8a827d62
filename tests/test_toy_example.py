"""The running example against the task it is drawn from, and the toy's question forms against the task's own."""

from anatomy.toy.example import QUESTION, is_toy_question, running_example
from anatomy.toy.task import COLOURS, QUESTION_TYPES, sample


def test_it_is_the_first_test_sample_that_asks_the_question():
    example = running_example()
    earlier = [sample(0, "test", i).question for i in range(example.index)]
    assert QUESTION not in earlier and example.sample == sample(0, "test", example.index)


def test_its_cell_holds_the_cross_of_the_answered_colour():
    example = running_example()
    (target,) = example.sample.target
    thing = example.sample.scene.things[target]
    assert (thing.shape, thing.colour) == ("cross", example.answer)
    assert example.sample.scene.cells()[example.cell] == target
    top, left, height, width = example.box
    cell = example.picture[top : top + height, left : left + width].reshape(-1, 3)
    assert (cell == COLOURS[example.answer]).all(-1).sum() > 50  # the cross is drawn in the answer's colour there


def test_its_patches_and_token_are_the_cells():
    example = running_example()
    row, col = example.cell
    assert example.token == row * 4 + col
    assert sorted(example.patches) == [(2 * row + dy, 2 * col + dx) for dy in (0, 1) for dx in (0, 1)]


def test_every_task_question_is_a_toy_question_and_others_are_not():
    asked = [sample(0, split, i) for split in ("train", "test") for i in range(90)]
    assert {s.kind for s in asked} == set(QUESTION_TYPES)
    assert all(is_toy_question(s.question) for s in asked)
    for other in ("What is the text in the illustrate?", "what colour is the cross?", "What colour is the cross",
                  "What colour is the hexagon?", "How many cross are there?"):
        assert not is_toy_question(other)
