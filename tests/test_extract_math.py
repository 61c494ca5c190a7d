"""Math answers scored by value (math-verify), from the model's whole reply to a verdict.

Each case is a reply written the way chat models answer competition math (MATH, GSM8K), with
the gold as the benchmark file gives it; the answer type is the one the reader infers from that
gold, so the cases go through the same extract -> score path as `orchestrate run`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.benchmarks.extract import equivalent_answers, extract_answer, is_correct
from orchestrator.benchmarks.readers import infer_answer_type

pytest.importorskip("math_verify")

SOLVE_LINEAR = """We have 2x + 3 = 13.
Subtracting 3 from both sides gives 2x = 10, and dividing by 2 gives x = 5.

The final answer is $\\boxed{x=5}$."""

POLAR_ANGLE = """The point (0, 3) lies on the positive y-axis, so r = 3 and the angle is a quarter turn.
Therefore $\\theta = \\boxed{\\pi/2}$."""

INTERSECTION = """Substituting y = 2x into x + y = 3 gives 3x = 3, so x = 1 and y = 2.
The lines meet at $\\boxed{\\left( 1, 2 \\right)}$."""

COIN = """There are 2 equally likely outcomes and 1 of them is heads.
So the answer is 1/2."""

DECIMAL_GOLD = """The shaded region is 3 of the 4 equal parts, so the fraction is
$$\\boxed{\\dfrac{3}{4}}$$"""

DIAGONAL = """The diagonal of a square with side 2 is $\\sqrt{2^2 + 2^2} = \\sqrt{8}$.
Final answer: $\\boxed{\\sqrt{8}}$"""

ASSIGNMENT_STATED = """Let x be the number of apples. Then 3x + 4 = 19, so 3x = 15.
The answer is $x = 5$."""

PERCENT = """The price went from $50 to $55, an increase of $5, and 5/50 = 0.1.
The percent increase is $\\boxed{10\\%}$."""

ROOTS = """Factoring, x^2 - 3x + 2 = (x - 1)(x - 2) = 0, so x = 2 or x = 1.
The answer is $\\{2, 1\\}$."""

THOUSANDS = """Each of the 8 boxes holds 125 pencils, so there are 8 * 125 pencils in all.
#### 1,000"""

# (reply, gold): the ten LaTeX-style answers of issue 16, each right in a careful human's eyes.
TEN_CASES = [
    pytest.param(SOLVE_LINEAR, "5", id="boxed-assignment-vs-number"),
    pytest.param(POLAR_ANGLE, "\\frac{\\pi}{2}", id="pi-over-2-vs-frac"),
    pytest.param(INTERSECTION, "(1,2)", id="left-right-pair-vs-pair"),
    pytest.param(COIN, "\\frac12", id="slash-fraction-vs-frac12"),
    pytest.param(DECIMAL_GOLD, "0.75", id="dfrac-vs-decimal"),
    pytest.param(DIAGONAL, "2\\sqrt{2}", id="sqrt8-vs-2sqrt2"),
    pytest.param(ASSIGNMENT_STATED, "5", id="stated-assignment-vs-number"),
    pytest.param(PERCENT, "10", id="latex-percent-vs-number"),
    pytest.param(ROOTS, "\\{1,2\\}", id="set-in-another-order"),
    pytest.param(THOUSANDS, "1000", id="thousands-separator"),
]


def _score(reply: str, gold: str) -> bool | None:
    answer_type = infer_answer_type("", gold, ())
    return is_correct(extract_answer(reply, answer_type), gold, answer_type)


@pytest.mark.parametrize("reply, gold", TEN_CASES)
def test_the_ten_latex_answers_are_right(reply, gold):
    assert _score(reply, gold) is True


def test_extraction_keeps_the_latex_math_verify_reads():
    assert extract_answer(SOLVE_LINEAR, "numeric") == "x=5"
    assert extract_answer(ASSIGNMENT_STATED, "numeric") == "x = 5"
    assert extract_answer("The answer is $2\\sqrt{2}$.", "numeric") == "2\\sqrt{2}"
    assert extract_answer("The answer is $\\frac{3}{4}$.", "numeric") == "3/4"
    assert extract_answer(POLAR_ANGLE, "text") == "\\pi/2"
    assert extract_answer(ROOTS, "text") == "$\\{2, 1\\}$"
    # two prices are not a formula between dollar signs
    assert extract_answer("The answer is $18 and the tip is $3.", "numeric") == "18"


# (reply, gold): wrong values and partial answers; each must score False.
WRONG = [
    pytest.param(SOLVE_LINEAR.replace("x=5", "x=6"), "5", id="assignment-wrong-value"),
    pytest.param(COIN.replace("1/2", "-1/2"), "\\frac12", id="sign-flipped"),
    pytest.param(POLAR_ANGLE.replace("\\pi/2", "\\pi"), "\\frac{\\pi}{2}", id="pi-vs-pi-over-2"),
    pytest.param(INTERSECTION.replace("1, 2", "2, 1"), "(1,2)", id="pair-order-matters"),
    pytest.param(INTERSECTION.replace("\\left( 1, 2 \\right)", "[1, 2]"), "(1,2)",
                 id="closed-vs-open-interval"),
    pytest.param(DIAGONAL.replace("\\boxed{\\sqrt{8}}", "\\boxed{\\sqrt{2}}"), "2\\sqrt{2}",
                 id="missing-factor"),
    pytest.param(ROOTS.replace("\\{2, 1\\}", "\\{2\\}"), "\\{1,2\\}", id="partial-set"),
    pytest.param("The solutions are x = 1 and x = 2, so the answer is 2.", "1,2",
                 id="one-of-two-solutions"),
    pytest.param(DECIMAL_GOLD.replace("3}{4", "2}{3"), "0.75", id="close-fraction"),
    pytest.param(PERCENT.replace("10\\%", "1\\%"), "10", id="percent-off-by-ten"),
    pytest.param(THOUSANDS.replace("1,000", "100"), "1000", id="dropped-zero"),
    pytest.param("The answer is silent.", "listen", id="prose-anagram-is-not-algebra"),
    pytest.param("I could not finish the computation.", "\\frac{\\pi}{2}", id="no-answer"),
]


@pytest.mark.parametrize("reply, gold", WRONG)
def test_wrong_and_partial_answers_are_wrong(reply, gold):
    assert _score(reply, gold) is False


@pytest.mark.parametrize("answer, gold, answer_type, expected", [
    pytest.param("2, 1", "1,2", "numeric", True, id="list-in-another-order"),
    pytest.param("5\\text{ cm}", "5", "numeric", True, id="number-with-unit"),
    pytest.param("(x+2)(x+5)", "x^2+7x+10", "text", True, id="factored-polynomial"),
    pytest.param("3\\sqrt{13}", "\\sqrt{117}", "text", True, id="simplified-radical"),
    pytest.param("Paris", "paris", "text", True, id="prose-stays-text"),
    # the regex scorer passed the next two, as '12' == '12' and 'frac12' == 'frac12'
    pytest.param("12", "1,2", "numeric", False, id="list-is-not-twelve"),
    pytest.param("-\\frac{1}{2}", "\\frac{1}{2}", "text", False, id="sign-kept"),
    pytest.param("\\frac{2}{1}", "\\frac{1}{2}", "text", False, id="digits-in-another-order"),
    pytest.param("x = 5", "y = 5", "text", False, id="another-variable"),
])
def test_scored_answers(answer, gold, answer_type, expected):
    assert is_correct(answer, gold, answer_type) is expected


def test_scoring_works_in_worker_threads():
    """The server scores in worker threads, where signal-based timeouts raise."""
    cases = [(p.values[0], p.values[1], True) for p in TEN_CASES]
    cases += [(p.values[0], p.values[1], False) for p in WRONG]
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda c: _score(c[0], c[1]), cases))
    assert verdicts == [c[2] for c in cases]


def test_a_power_tower_is_refused_fast_off_the_main_thread():
    """sympy does not return from verify('1', '10^{10^{10}}') within minutes; no timeout helps
    off the main thread, so the guard must refuse it before evaluation."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        verdicts = list(pool.map(lambda a: is_correct(a, "1", "numeric"),
                                 ["10^{10^{10}}", "(10^{10})!", "2^{2^{2^{2^{2}}}}"]))
    assert verdicts == [False, False, False]
    assert time.perf_counter() - start < 30


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_letters_and_plain_numbers_never_import_math_verify():
    done = _run("""
        import sys
        from orchestrator.benchmarks.extract import equivalent_answers, extract_answer, is_correct
        assert is_correct(extract_answer("The answer is (C).", "choice"), "C", "choice")
        assert not is_correct(extract_answer("Answer: B", "choice"), "C", "choice")
        assert is_correct(extract_answer("So she makes $1,234.00.", "numeric"), "1234", "numeric")
        assert is_correct(extract_answer("\\\\boxed{\\\\dfrac{3}{4}}", "numeric"), "0.75", "numeric")
        assert not is_correct(extract_answer("#### 17", "numeric"), "18", "numeric")
        assert is_correct("Paris", "paris", "text")
        print("fast", "math_verify" in sys.modules, "sympy" in sys.modules)
        assert is_correct("\\\\pi/2", "\\\\frac{\\\\pi}{2}", "text")
        print("math", "math_verify" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fast", "False", "False", "math", "True"]


def test_without_math_verify_scoring_falls_back_to_strings_with_one_warning():
    done = _run("""
        import sys
        sys.modules["math_verify"] = None  # what an environment without the package gives
        from orchestrator.benchmarks.extract import is_correct
        print(is_correct("\\\\pi/2", "\\\\frac{\\\\pi}{2}", "text"),
              is_correct("x=5", "5", "numeric"), is_correct("x=5", "x=5", "numeric"),
              is_correct("1/2", "0.5", "numeric"))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "True"]
    assert done.stderr.count("math-verify is not importable") == 1


def test_equivalent_answers_map_each_answer_to_the_first_that_says_the_same():
    said = ["x=5", "6", "5", "\\frac{\\pi}{2}", "\\pi/2", None, "6.0", "1/2", "\\frac12"]
    assert equivalent_answers(said, "text") == [
        "x=5", "6", "x=5", "\\frac{\\pi}{2}", "\\frac{\\pi}{2}", None, "6", "1/2", "1/2"]
    assert equivalent_answers(["b", "B", "C"], "choice") == ["b", "b", "C"]
    assert equivalent_answers(["Paris", "paris.", "Rome"], "text") == ["Paris", "Paris", "Rome"]
