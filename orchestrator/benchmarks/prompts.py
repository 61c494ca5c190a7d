"""The user prompt an expert receives for a query: the question, its options, and the answer
format that `extract.py` reads back."""

from __future__ import annotations

from ..types import Message, Query

LETTERS = "ABCDEFGHIJ"

CHOICE_INSTRUCTION = (
    "Answer the following multiple choice question. Think step by step if it helps, then finish "
    "with a line of the form 'The answer is (X)' where X is the letter of the correct option."
)
NUMERIC_INSTRUCTION = (
    "Solve the following problem. Think step by step, then finish with a line of the form "
    "'The answer is N' where N is the final number only."
)
TEXT_INSTRUCTION = (
    "Answer the following question. Finish with a line of the form 'The answer is ...'."
)


def render_question(query: Query) -> str:
    if not query.options:
        return query.question
    lines = [query.question, "", "Options:"]
    lines += [f"({LETTERS[i]}) {option}" for i, option in enumerate(query.options)]
    return "\n".join(lines)


def user_prompt(query: Query) -> str:
    instruction = {
        "choice": CHOICE_INSTRUCTION, "numeric": NUMERIC_INSTRUCTION, "text": TEXT_INSTRUCTION
    }[query.answer_type]
    return f"{instruction}\n\n{render_question(query)}"


def messages_for(query: Query, system_prompt: str | None) -> tuple[Message, ...]:
    user = Message("user", user_prompt(query))
    return (Message("system", system_prompt), user) if system_prompt else (user,)
