"""JSON schemas the LLM must answer in (sent as ``response_format`` json_schema).

Every string is capped (``max_length``) and every list bounded, because guided
decoding otherwise lets a small model run a string on to the token limit.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

Short = Annotated[str, Field(max_length=120)]
Line = Annotated[str, Field(max_length=300)]
Para = Annotated[str, Field(max_length=600)]
InstructionText = Annotated[str, Field(min_length=8, max_length=700)]
Score = Literal[1, 2, 3, 4, 5]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Titles are the labels of the line form (state/line_format.py), and ``line_pattern`` /
# ``item_pattern`` hold its values to a shape (a short phrase, a sentence about the answer,
# advice that starts with a verb); JSON schemas sent to a server leave them out.
PHRASE = "[a-z][a-z0-9'-]{1,20}( [a-z0-9'-]{1,20}){0,3}"
ABOUT_IT = "(It|Its|The) [^\\n]{8,120}"
ADVICE_VERBS = (
    "Give|Use|Keep|Say|Show|Explain|Add|End|Start|List|Name|Warn|Cover|Avoid|Include|Define"
    "|Check|Answer|Ask|Write|Make|Match|State|Put|Offer|Mention|Stay|Focus|Describe|Suggest"
    "|Choose|Set|Tell|Point out|Be"
)
ADVICE = f"({ADVICE_VERBS}) [^\\n;]{{5,100}}"


def _lines(**extra: str) -> Any:
    return {f"{k}": v for k, v in extra.items()}


class InstructionAnalysisOut(_Out):
    subject_areas: list[Short] = Field(
        min_length=1, max_length=3, title="Topics", json_schema_extra=_lines(item_pattern=PHRASE)
    )
    skills: list[Short] = Field(
        min_length=1, max_length=3, title="Skills", json_schema_extra=_lines(item_pattern=PHRASE)
    )
    clarity: Line = Field(title="Clarity", json_schema_extra=_lines(line_pattern=ABOUT_IT))


class ResponseAnalysisOut(_Out):
    content: Line = Field(title="Content", json_schema_extra=_lines(line_pattern=ABOUT_IT))
    communication: Line = Field(title="Form", json_schema_extra=_lines(line_pattern=ABOUT_IT))
    alignment: Line = Field(title="Fit", json_schema_extra=_lines(line_pattern=ABOUT_IT))
    improvements: list[Line] = Field(
        min_length=1,
        max_length=3,
        title="Could improve",
        json_schema_extra=_lines(item_pattern=ADVICE),
    )


class DistilledFeedbackOut(_Out):
    instruction_guidance: list[Line] = Field(
        min_length=1,
        max_length=4,
        title="For requests",
        json_schema_extra=_lines(item_pattern=ADVICE),
    )
    response_guidance: list[Line] = Field(
        min_length=1,
        max_length=4,
        title="For answers",
        json_schema_extra=_lines(item_pattern=ADVICE),
    )


class InstructionsOut(_Out):
    instructions: list[InstructionText] = Field(min_length=1, max_length=10)


REQUEST_OPENERS = (
    "Write|Explain|Describe|List|Give|Suggest|Create|Compare|Summarize|Tell me|Help me|Plan"
    "|Name|Find|Translate|Rewrite|Design|Outline|Calculate|Solve|Recommend|Draft|Compose"
    "|Classify|Convert|Identify|Make|Teach me|Show me|How|What|Why|When|Which|Who|Where"
    "|Is|Are|Can|Could|Should|Do|Does"
)
REQUEST_PATTERN = f"({REQUEST_OPENERS}) [A-Za-z0-9][^\\n]{{10,200}}[.?!]"
"""One request in plain words: opens as a request does (an imperative or a question word),
so a small model cannot answer the example instead of writing a new request."""


class OneInstructionOut(_Out):
    """One new instruction per completion (``n`` completions per request): the form small
    models manage, written as one labelled line."""

    instruction: str = Field(
        title="Request", max_length=240, json_schema_extra={"line_pattern": REQUEST_PATTERN}
    )


class SampleFeedbackOut(_Out):
    strengths: Line = Field(title="Strengths", json_schema_extra=_lines(line_pattern=ABOUT_IT))
    improvements: list[Line] = Field(
        min_length=1,
        max_length=3,
        title="Could improve",
        json_schema_extra=_lines(item_pattern=ADVICE),
    )


class JudgeOut(_Out):
    rationale: Para
    helpfulness: Score
    instruction_following: Score
    correctness: Score
    clarity: Score


JUDGE_CRITERIA: tuple[str, ...] = ("helpfulness", "instruction_following", "correctness", "clarity")


# --- judge schemas, built from a criteria set ----------------------------------------
#
# ``JudgeOut`` above is the joint schema of the default instruction criteria written out
# (the client tests use it); :func:`joint_schema` builds the same shape for any criteria.
# The rationale comes first so the score is decided after it; a ``rationale_chars`` of 0
# drops it (score only: cheapest, and the form HEAP-style training records use).

PairwiseWinner = Literal["A", "B", "tie"]


def _rationale_field(rationale_chars: int) -> dict[str, Any]:
    if rationale_chars <= 0:
        return {}
    return {"rationale": (Annotated[str, Field(max_length=rationale_chars)], ...)}


@cache
def pointwise_schema(points: tuple[int, ...], rationale_chars: int) -> type[BaseModel]:
    """``{rationale?, score}`` with ``score`` one of ``points``."""
    score_type: Any = Literal[points]
    return create_model(
        "PointwiseOut",
        __base__=_Out,
        **_rationale_field(rationale_chars),
        score=(score_type, ...),
    )


@cache
def joint_schema(
    criteria: tuple[tuple[str, tuple[int, ...]], ...], rationale_chars: int
) -> type[BaseModel]:
    """``{rationale?, <criterion>: score, ...}``: every criterion scored in one answer."""
    scores: dict[str, Any] = {name: (Literal[points], ...) for name, points in criteria}
    return create_model("JudgeOut", __base__=_Out, **_rationale_field(rationale_chars), **scores)


@cache
def pairwise_schema(rationale_chars: int) -> type[BaseModel]:
    """``{rationale?, winner}`` with winner "A", "B" or "tie"."""
    return create_model(
        "PairwiseOut",
        __base__=_Out,
        **_rationale_field(rationale_chars),
        winner=(PairwiseWinner, ...),
    )
