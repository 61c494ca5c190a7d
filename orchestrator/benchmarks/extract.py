"""Reading a final answer out of a model's free text, and scoring it against gold.

Multiple choice: letters A-J from "The answer is (C)", "Answer: C", "\\boxed{C}", or a reply that
is just the letter. Numbers and expressions: "\\boxed{}", "#### 18", "The answer is 18", with
commas, currency, percent and trailing ".0" normalised; then the last number as a fallback. A
boxed or stated answer that is not a plain number ("x=5", "\\frac{\\pi}{2}") is kept as LaTeX.

Scoring: letters are compared as letters, and two plain numbers as fractions, without importing
anything; other math answers are compared by value with math-verify (`mathscore.py`), and prose
answers as normalised text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from ..types import AnswerType

_L = r"[A-J]"
# After a bare letter: end, punctuation, or a line break. "I" and "A" are also English words,
# so for them a following word is not accepted ("Answer: I think..." is not option I).
_BARE_END = r"(?=\s*(?:$|[.,;:!)\]\n*]))"
_CHOICE_PATTERNS = [
    re.compile(rf"answer\s+is\s*:?\s*\**\s*\(({_L})\)", re.I),
    re.compile(rf"answer\s+is\s*:?\s*\**\s*({_L}){_BARE_END}", re.I),
    re.compile(r"answer\s+is\s*:?\s*\**\s*([B-HJ])\b(?!['’])", re.I),
    re.compile(rf"\banswer\s*(?:\([^)]*\))?\s*[:=]\s*\**\s*\(?({_L})\)?{_BARE_END}", re.I),
    re.compile(r"\banswer\s*[:=]\s*\**\s*\(?([B-HJ])\)?\b(?!['’])", re.I),
    re.compile(rf"\\boxed\{{\s*\(?({_L})\)?\s*\}}"),
    re.compile(rf"\boption\s+\(?({_L})\)?{_BARE_END}"),
]
_N_STATEMENTS = 5  # the first five patterns are answer statements: the last one in the text wins
_CHOICE_WHOLE = re.compile(rf"^\s*\**\(?({_L})\)?\**\s*[.:)]?\s*$")
_CHOICE_LEAD = re.compile(rf"^\s*\**\(({_L})\)|^\s*\**({_L})[.:)]\s")

# A minus right after a digit, letter or ")" is a hyphen or a subtraction ("5-3"), not a sign.
_NUM = r"(?:(?<![\w)])-)?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?"
_NUM_AFTER = [
    re.compile(rf"####\s*({_NUM})"),
    re.compile(rf"answer\s+is\s*:?\s*\**\s*({_NUM})", re.I),
    re.compile(rf"\banswer\s*[:=]\s*\**\s*({_NUM})", re.I),
]
_ANY_NUM = re.compile(_NUM)
# "The answer is $\\frac{3}{4}$": the math of an answer statement, delimited on one line
_MATH_AFTER = re.compile(
    r"(?:answer\s+is\s*:?|\banswer\s*[:=])\s*\**\s*(?:\$([^$\n]+)\$|\\\((.+?)\\\))", re.I)


def _letters_allowed(n_options: int | None) -> str:
    n = n_options if n_options and 0 < n_options <= 10 else 10
    return "ABCDEFGHIJ"[:n]


def extract_choice(text: str, n_options: int | None = None, options=()) -> str | None:
    allowed = _letters_allowed(n_options or len(options) or None)
    # re.I is for the word "answer"; the letter itself must be written in upper case.
    stated = [(m.start(), m.group(1)) for pattern in _CHOICE_PATTERNS[:_N_STATEMENTS]
              for m in pattern.finditer(text) if m.group(1).isupper() and m.group(1) in allowed]
    if stated:
        return max(stated, key=lambda hit: hit[0])[1]
    for pattern in _CHOICE_PATTERNS[_N_STATEMENTS:]:
        hits = [m.group(1) for m in pattern.finditer(text)]
        hits = [h for h in hits if h.isupper() and h in allowed]
        if hits:
            return hits[-1]
    for pattern in (_CHOICE_WHOLE, _CHOICE_LEAD):
        m = pattern.search(text)
        if m:
            letter = next(g for g in m.groups() if g)
            if letter in allowed:
                return letter
    if options:
        norm = _norm_text(text)
        for i, option in enumerate(options):
            if norm and norm == _norm_text(option):
                return "ABCDEFGHIJ"[i]
    return None


def _last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        start = text.rfind("\\fbox{")
        if start < 0:
            return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:\\?%)?$")


def normalize_number(raw: str) -> str | None:
    """'$1,234.00' -> '1234'; '3/4' -> '3/4'; '50%' -> '50'; returns None if not a number.
    A comma must group thousands: '1,2' is a list of two numbers, not 12."""
    s = raw.strip().rstrip(".,").replace("$", "").replace(" ", "")
    if "," in s and not _THOUSANDS.search(s):
        return None
    s = s.replace(",", "")
    s = s.replace("\\%", "").rstrip("%").replace("\\$", "")
    frac = re.fullmatch(r"(-?)\\d?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if frac:
        sign = -1 if frac.group(1) else 1
        s = f"{sign * int(frac.group(2))}/{frac.group(3)}"
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in s:
        return f"{value.numerator}/{value.denominator}"
    return format(float(value), ".15g") if len(s) > 15 else s.rstrip("0").rstrip(".")


def extract_number(text: str) -> str | None:
    boxed = _last_boxed(text)
    if boxed:  # an empty \boxed{} states nothing
        norm = normalize_number(boxed)
        return norm if norm is not None else boxed.strip()
    # "####" first; then answer statements ("The answer is", "Answer:"), the last one in the text.
    for patterns in ((_NUM_AFTER[0],), (*_NUM_AFTER[1:], _MATH_AFTER)):
        # at one position the delimited math ("$2\\sqrt{2}$") beats its leading number ("$2")
        hits = sorted((m.start(), pattern is _MATH_AFTER, next(g for g in m.groups() if g).strip())
                      for pattern in patterns for m in pattern.finditer(text))
        for _, is_latex, raw in reversed(hits):  # "$18 and the tip is $" is no formula
            norm = normalize_number(raw)
            if norm is not None:
                return norm
            if is_latex and _is_math(raw):
                return raw
    hits = _ANY_NUM.findall(text)
    for raw in reversed(hits):
        norm = normalize_number(raw)
        if norm is not None:
            return norm
    return None


_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")


def _is_math(text: str) -> bool:
    """A formula rather than prose: no word of three letters once LaTeX commands are removed
    ("\\frac{\\pi}{2}", "x=5", "5\\text{ cm}" yes; "Paris", "\\text{Evelyn}" no)."""
    return bool(text.strip()) and not _WORD.search(_LATEX_COMMAND.sub(" ", text))


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def extract_answer(text: str, answer_type: AnswerType, options=()) -> str | None:
    if not text:
        return None
    if answer_type == "choice":
        return extract_choice(text, options=options)
    if answer_type == "numeric":
        return extract_number(text)
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    return _stated_text(text)


_STATED = re.compile(r"answer\s+is\s*:?[ \t]*", re.I)


def _stated_text(text: str) -> str | None:
    """Free-form answer: what follows the last 'The answer is' (a block when it starts on the
    next line, else the rest of that line), or the last line of the reply."""
    stated = list(_STATED.finditer(text))
    if not stated:
        return text.strip().splitlines()[-1].strip()
    rest = text[stated[-1].end() :]
    if rest.startswith("\n"):
        block = rest.strip("\n").rstrip()
        return block or None
    line = rest.split("\n", 1)[0].strip()
    return re.sub(r"\s*\.$", "", line) or None


def _as_fraction(value: str) -> Fraction | None:
    norm = normalize_number(value)
    if norm is None:
        return None
    try:
        return Fraction(norm)
    except (ValueError, ZeroDivisionError):
        return None


def _bare(text: str) -> str:
    return re.sub(r"\s+", "", text).strip("$")


def is_correct(answer: str | None, gold: str | None, answer_type: AnswerType) -> bool | None:
    """None when there is no gold to score against; False when no answer was extracted.

    choice: same letter. numeric and text: two plain numbers (fractions, "\\frac{3}{4}", "50%")
    compare as fractions within 1e-6; a prose gold compares as normalised text; any other
    formula compares by value with math-verify, imported only then (without it: as strings)."""
    if gold is None:
        return None
    if answer is None:
        return False
    if answer_type == "choice":
        return answer.strip().upper() == gold.strip().upper()
    a, g = _as_fraction(answer), _as_fraction(gold)
    if a is not None and g is not None:
        return abs(a - g) <= Fraction(1, 10**6) * max(1, abs(g))
    if answer_type == "text" and not _is_math(gold):
        return _norm_text(answer) == _norm_text(gold)
    if _bare(answer) == _bare(gold):
        return True
    from .mathscore import same_math

    same = same_math(answer, gold)
    if same is not None:
        return same
    if answer_type == "numeric":
        return answer.strip() == gold.strip()
    return _norm_text(answer) == _norm_text(gold)


def equivalent_answers(answers: Sequence[str | None], answer_type: AnswerType
                       ) -> list[str | None]:
    """Each answer replaced by the first earlier one that says the same (`is_correct` with the
    earlier one as gold), so that a vote counts "x=5" and "5", or "\\frac12" and "0.5", as one
    answer; letters compare as letters. No answer stays None."""
    seen: list[str] = []
    out: list[str | None] = []
    for answer in answers:
        if answer is None:
            out.append(None)
            continue
        same = next((s for s in seen if s == answer or is_correct(answer, s, answer_type)), None)
        if same is None:
            seen.append(answer)
        out.append(answer if same is None else same)
    return out
