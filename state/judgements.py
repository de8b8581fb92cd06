"""What the judge returns: scores per criterion (with how they were read) and pairwise verdicts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

ScoreMethod = Literal["sampled", "logprob", "encoder"]
Method = Literal["sampled", "logprob", "mixed", "encoder"]
"""``encoder``: a score from the trained cross-encoder metric (metric/), not an LLM."""
Vote = Literal["first", "second", "tie"]


def combined_method(methods: list[ScoreMethod] | tuple[ScoreMethod, ...]) -> Method:
    """``logprob`` when every score is an expectation, ``sampled`` when none is, else mixed."""
    kinds = set(methods)
    if kinds == {"encoder"}:
        return "encoder"
    if kinds == {"logprob"}:
        return "logprob"
    if kinds <= {"sampled"}:
        return "sampled"
    return "mixed"


DEFAULT_MARGIN = 0.5
"""How far under its reference's score a sample may be with a bare ``reference`` bar."""


@dataclass(frozen=True)
class JudgeBar:
    """What a mean judge score must reach: a fixed number, or its reference's score less a
    margin (``anchored``). The references are the method's standard of quality, so an
    anchored bar means the same on any judge, whatever its scale habits."""

    value: float
    anchored: bool = False

    @classmethod
    def parse(cls, raw: str | float) -> JudgeBar:
        if isinstance(raw, int | float):
            return cls(float(raw))
        text = raw.strip().lower()
        if text == "reference" or text.startswith("reference:"):
            margin = text.partition(":")[2].strip()
            try:
                value = float(margin) if margin else DEFAULT_MARGIN
            except ValueError:
                raise ValueError(
                    f"judge bar {raw!r}: the margin after 'reference:' must be a number"
                ) from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"judge bar {raw!r}: the margin must be 0 or more")
            return cls(value, anchored=True)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"judge bar {raw!r}: give a number (e.g. 3.0) or reference[:MARGIN]"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"judge bar {raw!r}: not a finite number")
        return cls(value)

    @property
    def text(self) -> str:
        return f"reference:{self.value:g}" if self.anchored else f"{self.value:g}"

    def threshold(self, reference_score: float | None) -> float | None:
        """The score to reach; None when the bar is anchored and the reference has none."""
        if not self.anchored:
            return self.value
        return None if reference_score is None else reference_score - self.value


class CriterionScore(BaseModel):
    """One criterion's score.

    ``logprob``: the probability-weighted mean over the scale's score tokens at the
    score's position in the answer (``probs``, normalised over the scale); ``sampled``:
    the score the model wrote (no log-probabilities, or none usable at that position).
    """

    score: float
    sampled: int = Field(description="The score token the model actually wrote.")
    method: ScoreMethod
    probs: dict[int, float] | None = None


class PointwiseResult(BaseModel):
    """Scores of one record on some criteria of a criteria set."""

    criteria: str = Field(description="Name of the criteria set.")
    scores: dict[str, CriterionScore]
    rationale: str = ""
    method: Method

    def values(self) -> dict[str, float]:
        return {name: s.score for name, s in self.scores.items()}

    @property
    def mean(self) -> float:
        values = list(self.values().values())
        return sum(values) / len(values)


class PairwiseVerdict(BaseModel):
    """Which of two texts is better, asked in both orders to cancel position bias.

    ``votes`` holds one vote per order asked: first with ``first`` shown as A, then
    with ``second`` shown as A, each mapped back to first/second/tie. The winner sums
    them (a win counts +1 for its side): two opposite votes make a tie, a win and a tie
    make a win. No votes at all means the two texts were identical (no call made).
    """

    winner: Vote
    votes: tuple[Vote, ...] = ()
    criterion: str | None = Field(
        default=None, description="The criterion compared on; None: all of the set's."
    )
    rationale: str = ""

    @property
    def consistent(self) -> bool:
        """Both orders gave the same answer."""
        return len(set(self.votes)) == 1


def winner_of(votes: tuple[Vote, ...] | list[Vote]) -> Vote:
    total = sum(1 if v == "first" else -1 if v == "second" else 0 for v in votes)
    return "first" if total > 0 else "second" if total < 0 else "tie"


# --- agreement with people (``python -m graph.judge eval``) ----------------------------------


class Correlation(BaseModel):
    """Spearman and Kendall (tau-b) between judge and human scores; NaN when undefined.

    At document level: the mean of per-document correlations over ``n`` documents, with
    ``skipped`` documents left out because one side was constant there.
    """

    spearman: float
    kendall: float
    n: int
    skipped: int = 0


class PointwiseReport(BaseModel):
    """How a judge's scores agree with human scores on one set."""

    set: str
    criteria: str
    criteria_version: str
    model: str
    records: int
    judged: int
    failed: int
    method: dict[str, int] = Field(description="How many records were scored by each method.")
    per_criterion: bool
    rationale_chars: int
    logprobs: int
    primary: str
    levels: dict[str, dict[str, Correlation]] = Field(
        description="level (record, document, system) -> criterion -> correlation"
    )
    average: dict[str, Correlation] = Field(description="level -> mean over criteria")
    seconds: float
    seconds_per_record: float = Field(description="Wall time per record judged in this run.")
    resumed: int = Field(default=0, description="Records taken from an interrupted run.")
    concurrency: int
    sample: str
    errors: list[str] = Field(default_factory=list, description="The first few failures.")


class Agreement(BaseModel):
    """Agreement of pairwise verdicts with human preferences.

    ``with_ties``: three-way (first/second/tie) accuracy over all pairs. ``without_ties``:
    accuracy over the pairs people did not call a tie (a judge tie counts as a miss);
    ``decided``: the same, over those where the judge did not say tie either.
    ``consistent``: share of pairs where both orders gave the same vote.
    """

    with_ties: float
    without_ties: float
    decided: float
    n: int
    n_without_ties: int
    n_decided: int
    judge_ties: float
    consistent: float


class PairwiseReport(BaseModel):
    set: str
    criteria: str
    criteria_version: str
    model: str
    records: int
    judged: int
    failed: int
    rationale_chars: int
    agreement: Agreement
    confusion: dict[str, dict[str, int]] = Field(description="human label -> judge winner -> n")
    seconds: float
    seconds_per_record: float = Field(description="Wall time per record judged in this run.")
    resumed: int = Field(default=0, description="Records taken from an interrupted run.")
    concurrency: int
    sample: str
    errors: list[str] = Field(default_factory=list)
