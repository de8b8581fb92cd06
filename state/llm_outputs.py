"""JSON schemas the LLM must answer in (sent as ``response_format`` json_schema).

Every string is capped (``max_length``) and every list bounded, because guided
decoding otherwise lets a small model run a string on to the token limit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Short = Annotated[str, Field(max_length=120)]
Line = Annotated[str, Field(max_length=300)]
Para = Annotated[str, Field(max_length=600)]
InstructionText = Annotated[str, Field(min_length=8, max_length=700)]
Score = Literal[1, 2, 3, 4, 5]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstructionAnalysisOut(_Out):
    subject_areas: list[Short] = Field(min_length=1, max_length=3)
    skills: list[Short] = Field(min_length=1, max_length=3)
    clarity: Line


class ResponseAnalysisOut(_Out):
    content: Line
    communication: Line
    alignment: Line
    improvements: list[Line] = Field(min_length=1, max_length=3)


class DistilledFeedbackOut(_Out):
    instruction_guidance: list[Line] = Field(min_length=1, max_length=4)
    response_guidance: list[Line] = Field(min_length=1, max_length=4)


class InstructionsOut(_Out):
    instructions: list[InstructionText] = Field(min_length=1, max_length=10)


class SampleFeedbackOut(_Out):
    strengths: Line
    improvements: list[Line] = Field(min_length=1, max_length=3)


class JudgeOut(_Out):
    rationale: Para
    helpfulness: Score
    instruction_following: Score
    correctness: Score
    clarity: Score


JUDGE_CRITERIA: tuple[str, ...] = ("helpfulness", "instruction_following", "correctness", "clarity")
