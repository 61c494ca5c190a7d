"""Math answers compared by value with math-verify (HuggingFace), the scorer Symbolic-MoE uses.

`same_math(answer, gold)` parses both strings as LaTeX or plain expressions and asks
`math_verify.verify(gold, answer)`: "\\pi/2" equals "\\frac{\\pi}{2}", "x = 5" equals "5",
"\\{2,1\\}" equals "\\{1,2\\}". It returns None when math-verify is not installed; the caller then
keeps its string comparison (one warning per process).

Threads: math-verify's default timeouts use signal.alarm, which raises off the main thread (the
server scores in worker threads). Both calls therefore run with their timeouts off, and a guard
refuses what sympy could spend minutes evaluating (power towers, huge factorials, very long
strings): verify("1", "10^{10^{10}}") does not return within 5 minutes. On the main thread the
signal timeout stays on as a second fence.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

log = logging.getLogger(__name__)

_MAX_CHARS = 400  # longer "answers" are prose or a derivation, not a final value
_MAX_NUMBER = 10**4  # largest exponent, factorial or binomial argument evaluated
_TIMEOUT_S = 5  # math-verify's own limit, applied on the main thread only
_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")

_state = {"warned": False, "module": None}
_lock = threading.Lock()


def _math_verify():
    """The math_verify module, imported on first use; None (warned once) when not installed."""
    with _lock:
        if _state["module"] is None:
            try:
                import math_verify
            except ImportError as err:
                if not _state["warned"]:
                    log.warning("math-verify is not importable (%s): math answers are compared as "
                                "strings and numbers only. Install it: pip install math-verify", err)
                    _state["warned"] = True
                return None
            # the timeouts are off on purpose (see the module docstring): drop its reminder
            for name in ("math_verify.parser", "math_verify.grader"):
                logging.getLogger(name).addFilter(
                    lambda record: not record.getMessage().startswith("Timeout is disabled"))
            _state["module"] = math_verify
    return _state["module"]


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parse(text: str, timeout: int | None) -> tuple:
    """[sympy value, source string] as math_verify.parse gives them; () when nothing parses.
    Bare answers ("x=5", "\\frac12") are wrapped in \\boxed{} so the LaTeX extractor takes them
    whole; a string with its own $...$, \\(...\\) or \\boxed{} is passed as written."""
    mv = _state["module"]
    source = text if any(d in text for d in _DELIMITERS) else "\\boxed{" + text + "}"
    return tuple(mv.parse(source, parsing_timeout=timeout))


def _too_costly(values: tuple) -> bool:
    """True when evaluating a parsed value could take minutes: an exponent or a factorial or
    binomial argument that is itself a power (a tower) or a number beyond _MAX_NUMBER."""
    import sympy

    heavy = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma)

    def risky(expr) -> bool:
        if expr.free_symbols:
            return False
        for node in sympy.preorder_traversal(expr):
            if node.is_Number and abs(node) > _MAX_NUMBER:
                return True
            if isinstance(node, heavy):
                return True
            if isinstance(node, sympy.Pow) and not (node.exp.is_Number and abs(node.exp) <= 1):
                return True
        return False

    try:
        for value in values:
            if isinstance(value, sympy.MatrixBase):
                value = sympy.Tuple(*value)
            if not isinstance(value, sympy.Basic):
                continue
            for node in sympy.preorder_traversal(value):
                if isinstance(node, sympy.Pow) and risky(node.exp):
                    return True
                if isinstance(node, heavy) and any(risky(arg) for arg in node.args):
                    return True
    except (TypeError, ValueError):  # e.g. nan has no order: not worth the risk
        return True
    return False


def same_math(answer: str, gold: str) -> bool | None:
    """True when the answer has the gold's mathematical value; None without math-verify."""
    mv = _math_verify()
    if mv is None:
        return None
    answer, gold = answer.strip(), gold.strip()
    if not answer or not gold or len(answer) > _MAX_CHARS or len(gold) > _MAX_CHARS:
        return False
    timeout = _timeout()
    parsed_gold, parsed_answer = _parse(gold, timeout), _parse(answer, timeout)
    if not parsed_gold or not parsed_answer:
        return False
    if _too_costly(parsed_gold) or _too_costly(parsed_answer):
        return False
    return bool(mv.verify(list(parsed_gold), list(parsed_answer), timeout_seconds=timeout))
