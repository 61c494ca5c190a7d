"""Escalation rules: how many more of a work item's chosen experts to call, given the outputs
of those already called (in selection order). 0 means the aggregate can no longer change.

`vote_next_calls` is exact for the `vote` aggregator's weighted majority (`vote.majority`:
most weight, then the heaviest single voter, then the earliest): the remaining experts may
answer anything (an answer already given, a new one) or fail, and the result is decided when
no such outcome changes the winner. Checking "all remaining experts vote for one competitor"
for every competitor (and for a new answer) covers every outcome: splitting their votes, or
failing, only weakens the competitor.
"""

from __future__ import annotations

from collections.abc import Sequence

LEADER = "\x00leader"  # stands for "the answer the next experts agree on" before any answer


def _unseen(answers: Sequence[str | None]) -> str:
    """An answer none of `answers` is: what a remaining expert may say that nobody said."""
    n = 0
    while f"\x00new{n}" in answers:
        n += 1
    return f"\x00new{n}"


def vote_decided(answers: Sequence[str | None], weights: Sequence[float],
                 remaining: Sequence[float]) -> bool:
    from .vote import majority

    if not remaining:
        return True
    winner, totals = majority(answers, weights)
    if winner is None:
        return False
    for rival in [a for a in totals if a != winner] + [_unseen(answers)]:
        trial, _ = majority([*answers, *[rival] * len(remaining)], [*weights, *remaining])
        if trial != winner:
            return False
    return True


def vote_next_calls(answers: Sequence[str | None], weights: Sequence[float],
                    remaining: Sequence[float], *, confident: bool = False,
                    agreement: float = 1.0, min_votes: int = 2) -> int:
    """How many of the `remaining` experts (their weights, in order) to call next: 0 when
    decided, else the fewest that could decide it if they all agreed with the leader."""
    if vote_decided(answers, weights, remaining):
        return 0
    if confident and _confident(answers, weights, agreement, min_votes):
        return 0
    from .vote import majority

    leader, _ = majority(answers, weights)
    leader = LEADER if leader is None else leader
    for j in range(1, len(remaining)):
        if vote_decided([*answers, *[leader] * j], [*weights, *remaining[:j]], remaining[j:]):
            return j
        if confident and _confident([*answers, *[leader] * j], [*weights, *remaining[:j]],
                                    agreement, min_votes):
            return j
    return len(remaining)


def _confident(answers: Sequence[str | None], weights: Sequence[float], agreement: float,
               min_votes: int) -> bool:
    cast = [(a, w) for a, w in zip(answers, weights) if a is not None]
    if len(cast) < min_votes:
        return False
    total = sum(w for _, w in cast)
    if total <= 0:
        return False
    lead = max({a for a, _ in cast}, key=lambda a: sum(w for b, w in cast if b == a))
    return sum(w for a, w in cast if a == lead) / total >= agreement - 1e-9
