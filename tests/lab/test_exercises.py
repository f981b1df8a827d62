"""The exercise checks the notebooks use."""

from anatomy.lab.exercises import check, verdict


def test_exercise_verdicts():
    assert verdict(None, 3) == "not answered yet"
    assert verdict(3, 3) == "right" and verdict(4, 3).startswith("not right")
    assert verdict(0.9995, 1.0, tolerance=1e-3) == "right"
    assert verdict("::1", "127.0.0.1", alternatives=("::1",)) == "right"
    assert verdict(True, 1, tolerance=0.5) == "right"  # a bool is compared as an answer, not as a number


def test_check_prints_the_numbered_verdict(capsys):
    check(2, 5, 5)
    check(3, None, 5)
    assert capsys.readouterr().out == "exercise 2: right\nexercise 3: not answered yet\n"
