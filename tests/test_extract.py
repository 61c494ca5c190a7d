"""Answer extraction from free model text, and scoring against gold.

The texts are written the way small chat models (SmolLM2, Llama) answer: a chain of thought with
other letters and numbers in it, then a final statement in one of several styles.
"""

from __future__ import annotations

import pytest

from orchestrator.benchmarks.extract import (
    extract_answer,
    extract_choice,
    extract_number,
    is_correct,
    normalize_number,
)

MYELIN_COT = """Let's think step by step.
Saltatory conduction is seen in myelinated fibers, so (C) is true.
Membrane currents are generated at the nodes of Ranvier, so (B) is true.
Local anesthetics act on myelinated fibers too, so (D) is true.
Impulses travel faster, not slower, through myelinated fibers.
The answer is (A)."""

LLAMA_MARKDOWN = """**Step 1: Convert the units.**
A mass of 42,000 g is 42 kg.

**Step 2: Compare with the options.**
Option A is 4.2 kg and option C is 420 kg, so neither fits.

**Answer:** (B)"""

SELF_CORRECTION_LETTERS = """The answer is (B).
Wait, let me double-check. Option B gives 40 N, but the mass is 2 kg and a = 3 m/s^2,
so F = 6 N, which is option D.
Answer: D"""

JANET_COT = """Janet's ducks lay 16 eggs per day.
She eats 3 for breakfast and bakes muffins with 4, so she has 16 - 3 - 4 = 9 eggs left.
She sells each egg for $2, so she makes 9 * 2 = 18 dollars.
The answer is 18."""

GSM8K_STYLE = """Step 1: 3 + 4 = 7 apples in the first basket.
Step 2: 7 * 2 = 14 apples in total.
#### 14
I hope this helps! Let me know if you have 3 more problems."""

SELF_CORRECTION_NUMBER = """So the answer is 16.
Wait, she also uses 4 eggs for muffins, so 16 - 3 - 4 = 9 eggs are sold.
At $2 each she makes 9 * 2 = 18 dollars.
Final answer: 18"""


# --- multiple choice -------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    pytest.param("The answer is (C)", "C", id="answer-is-paren"),
    pytest.param("the answer is C.", "C", id="answer-is-lowercase-sentence"),
    pytest.param("Answer: C", "C", id="answer-colon"),
    pytest.param("**Answer:** (B)", "B", id="markdown-bold-answer"),
    pytest.param("The answer is: **C**", "C", id="answer-is-colon-bold"),
    pytest.param("D", "D", id="bare-letter"),
    pytest.param("  (B)\n", "B", id="bare-paren-letter"),
    pytest.param("(E) 42 kg", "E", id="letter-with-option-text"),
    pytest.param("Answer: (C) 420 kg", "C", id="answer-colon-with-option-text"),
    pytest.param("So the answer is $\\boxed{G}$.", "G", id="boxed-letter"),
    pytest.param("The answer is A, because the others are wrong.", "A", id="letter-A-then-comma"),
    pytest.param("Answer: I", "I", id="letter-I-is-an-option"),
    pytest.param("The final answer is (J)", "J", id="tenth-option"),
    pytest.param(MYELIN_COT, "A", id="cot-mentions-other-options"),
    pytest.param(LLAMA_MARKDOWN, "B", id="llama-markdown-cot"),
    pytest.param("The answer is (A). Wait, actually the answer is (D).", "D", id="last-statement-wins"),
    pytest.param(SELF_CORRECTION_LETTERS, "D", id="self-correction-mixed-styles"),
    pytest.param("I first thought the answer is (A). Rechecking the units, the answer is C.", "C",
                 id="self-correction-paren-then-bare"),
])
def test_choice_is_extracted(text, expected):
    assert extract_choice(text) == expected
    assert extract_answer(text, "choice") == expected


@pytest.mark.parametrize("text", [
    pytest.param("A good approach is to convert grams to kilograms first, then compare.",
                 id="prose-starting-with-A"),
    pytest.param("A 45-year-old man presents with chest pain.\nI would need an ECG to decide.",
                 id="vignette-no-answer"),
    pytest.param("Answer: I think it depends on the patient's age.", id="answer-colon-pronoun-I"),
    pytest.param("The answer is A because of the pressure.", id="answer-is-article-A"),
    pytest.param("The answer is (K)", id="letter-beyond-J"),
    pytest.param("", id="empty"),
    pytest.param("I cannot determine the answer", id="refusal"),
    pytest.param("the answer is c", id="lowercase-letter-is-prose"),
    pytest.param("Let me think about this question step by step.", id="unfinished-cot"),
])
def test_choice_not_extracted(text):
    assert extract_choice(text) is None
    assert extract_answer(text, "choice") is None


@pytest.mark.parametrize("text", [
    pytest.param("The answer is (E)", id="answer-is-paren"),
    pytest.param("Answer: E", id="answer-colon"),
    pytest.param("E", id="bare-letter"),
    pytest.param("(E) 42 kg", id="letter-with-option-text"),
])
def test_choice_beyond_the_number_of_options_is_rejected(text):
    options = ("4.2 kg", "42 kg", "420 kg", "4200 kg")
    assert extract_choice(text, n_options=4) is None
    assert extract_choice(text, options=options) is None
    assert extract_answer(text, "choice", options) is None
    assert extract_choice(text, n_options=5) == "E"


def test_choice_from_an_option_written_out():
    options = ("100", "20", "14", "40")
    assert extract_choice("20", options=options) == "B"
    assert extract_answer("14.", "choice", options) == "C"
    assert extract_answer("30", "choice", options) is None


def test_earlier_answer_statement_beats_a_later_option_mention():
    text = "The answer is (A), since option (C) is wrong."
    assert extract_choice(text) == "A"


# --- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    pytest.param("\\boxed{18}", "18", id="boxed"),
    pytest.param("The answer is: $\\boxed{36}$", "36", id="boxed-in-latex"),
    pytest.param("\\boxed{\\frac{1}{2}}", "1/2", id="boxed-frac"),
    pytest.param("\\boxed{\\dfrac{3}{4}}", "3/4", id="boxed-dfrac"),
    pytest.param("\\boxed{-\\frac{1}{2}}", "-1/2", id="boxed-negative-frac"),
    pytest.param("First \\boxed{18}, then corrected: \\boxed{20}", "20", id="last-boxed"),
    pytest.param("\\boxed{}\nThe answer is 42.", "42", id="empty-boxed-falls-through"),
    pytest.param("The answer is 18", "18", id="answer-is"),
    pytest.param("#### 18", "18", id="gsm8k-marker"),
    pytest.param("Answer: 42", "42", id="answer-colon"),
    pytest.param("1,234", "1234", id="thousands-comma"),
    pytest.param("$18.00", "18", id="dollars-cents"),
    pytest.param("18.0", "18", id="trailing-zero"),
    pytest.param("The answer is $1,234.50.", "1234.5", id="money-sentence"),
    pytest.param("The answer is 50%", "50", id="percent"),
    pytest.param("The answer is 3/4", "3/4", id="fraction"),
    pytest.param("Final answer: 0.50", "0.5", id="decimal-trailing-zero"),
    pytest.param("The answer is -7.", "-7", id="negative"),
    pytest.param("The temperature fell to -12 degrees.", "-12", id="negative-fallback"),
    pytest.param("So x = -3.5", "-3.5", id="negative-decimal"),
    pytest.param("She has 20 - 8 = 12 apples left.", "12", id="fallback-last-number"),
    pytest.param("Most recipes bake it for 20-25 minutes.", "25", id="hyphen-range-not-negative"),
    pytest.param("The answer is 123456.78000000001", "123456.78", id="float-noise"),
    pytest.param(JANET_COT, "18", id="cot-last-statement"),
    pytest.param(GSM8K_STYLE, "14", id="marker-beats-trailing-number"),
    pytest.param("The answer is 18 eggs. Over 2 days she would have 36.", "18",
                 id="statement-beats-later-numbers"),
    pytest.param(SELF_CORRECTION_NUMBER, "18", id="self-correction-final-answer"),
    pytest.param("Answer: 12\nHmm, I forgot the tip, so the answer is 14.", "14",
                 id="self-correction-answer-is"),
])
def test_number_is_extracted(text, expected):
    assert extract_number(text) == expected
    assert extract_answer(text, "numeric") == expected


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("I cannot solve this without knowing the price.", id="no-number"),
    pytest.param("The answer is unclear.", id="answer-is-no-number"),
    pytest.param("\\boxed{}", id="empty-boxed"),
])
def test_number_not_extracted(text):
    assert extract_number(text) is None
    assert extract_answer(text, "numeric") is None


@pytest.mark.parametrize("raw, expected", [
    pytest.param("$1,234.00", "1234", id="money"),
    pytest.param("18.", "18", id="trailing-dot"),
    pytest.param("0.50", "0.5", id="trailing-zero"),
    pytest.param("6/8", "3/4", id="reduced-fraction"),
    pytest.param("\\frac{4}{2}", "2", id="latex-frac-integer"),
    pytest.param("0.30000000000000004", "0.3", id="float-noise"),
    pytest.param("twelve", None, id="word"),
    pytest.param("3/0", None, id="division-by-zero"),
])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


# --- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, gold, expected", [
    pytest.param("18", "18", True, id="same"),
    pytest.param("18.0", "18", True, id="trailing-zero"),
    pytest.param("$18.00", "18", True, id="dollars"),
    pytest.param("1,234", "1234", True, id="comma"),
    pytest.param("1/2", "0.5", True, id="fraction-vs-decimal"),
    pytest.param("0.5", "1/2", True, id="decimal-vs-fraction"),
    pytest.param("-7", "-7", True, id="negative"),
    pytest.param("50%", "50", True, id="percent"),
    pytest.param("123456.78000000001", "123456.78", True, id="float-noise"),
    pytest.param("17", "18", False, id="off-by-one"),
    pytest.param("7", "-7", False, id="sign"),
    pytest.param("18.01", "18", False, id="close-but-wrong"),
    pytest.param("x = 5", "5", True, id="assignment-by-value"),  # math-verify, test_extract_math.py
    pytest.param("x = 6", "5", False, id="assignment-wrong-value"),
    pytest.param(None, "18", False, id="nothing-extracted"),
])
def test_is_correct_numeric(answer, gold, expected):
    assert is_correct(answer, gold, "numeric") is expected


@pytest.mark.parametrize("answer, gold, expected", [
    pytest.param("C", "C", True, id="same"),
    pytest.param("c", "C", True, id="lowercase-answer"),
    pytest.param("C", " c ", True, id="lowercase-gold-with-spaces"),
    pytest.param("B", "C", False, id="wrong"),
    pytest.param(None, "C", False, id="nothing-extracted"),
])
def test_is_correct_choice(answer, gold, expected):
    assert is_correct(answer, gold, "choice") is expected


@pytest.mark.parametrize("answer_type", ["choice", "numeric", "text"])
def test_no_gold_is_unscored_not_wrong(answer_type):
    assert is_correct("18", None, answer_type) is None


@pytest.mark.parametrize("text, gold, answer_type, options, expected", [
    pytest.param(MYELIN_COT, "A", "choice", (), True, id="choice-right"),
    pytest.param(MYELIN_COT, "C", "choice", (), False, id="choice-wrong"),
    pytest.param(SELF_CORRECTION_LETTERS, "D", "choice", ("40 N", "20 N", "12 N", "6 N"), True,
                 id="choice-corrected"),
    pytest.param("I cannot determine the answer", "B", "choice", (), False, id="choice-refusal"),
    pytest.param(JANET_COT, "18", "numeric", (), True, id="numeric-right"),
    pytest.param(JANET_COT, "9", "numeric", (), False, id="numeric-wrong"),
    pytest.param("The answer is $1,234.00.", "1234", "numeric", (), True, id="numeric-formatted"),
    pytest.param(SELF_CORRECTION_NUMBER, "18", "numeric", (), True, id="numeric-corrected"),
    pytest.param("I am not sure.", "18", "numeric", (), False, id="numeric-no-number"),
])
def test_extract_then_score(text, gold, answer_type, options, expected):
    assert is_correct(extract_answer(text, answer_type, options), gold, answer_type) is expected
