"""The validity checks catch what a small model was seen to write, and leave human data alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import prompts
from dataset.answers import screen_answer, without_revision_note
from dataset.validity import (
    answer_problem,
    cut_answer,
    degenerate,
    instruction_problem,
    loop_cut,
    not_a_request,
    personal_question,
)

REF_INSTRUCTION = "Write a short poem about the sea for a child."
REF_RESPONSE = "The sea is big and blue,\nit sings a song for you."


def _synthesis_prompt_text() -> str:
    """The default synthesis and feedback prompts as rendered: what a model may copy."""
    parts = []
    for name in ("analyze_instruction", "analyze_response", "distill_feedback"):
        msgs = prompts.load(name).render(
            instruction=REF_INSTRUCTION,
            response=REF_RESPONSE,
            subject_areas="sea",
            skills="poetry",
            clarity="clear",
            content="good",
            communication="good",
            alignment="good",
            improvements="none",
        )
        parts.extend(m["content"] for m in msgs)
    return "\n".join(parts)


# The instructions issue 15 found in the embedded default's output.
SEEN_INSTRUCTIONS = [
    ("Title Description", "not-a-request"),
    ("problem,", "not-a-request"),
    ("up to three short phrases", "copies-prompt"),
    ("up to four points a new instruction in this spirit should meet", "copies-prompt"),
    (",4>=AAUL,6OPT,2,*4.2CrossRefMUSTtab={", "not-a-request"),
    ("break-a-jar-lid-open-without-you-gras-on-the-ground", "not-a-request"),
    ("I'm here to help you with your creative endeavors. What's on your mind?", "not-a-request"),
    # ... and in the demo and Self-Instruct runs of the `replies-to-feedback` check:
    ("What are you looking to buy at the store that sells furniture?", "personal-question"),
    ("What are your hobbies that you would not tell to anyone else?", "personal-question"),
    (
        "How do you plan on making money with a business that has no cash reserves?",
        "personal-question",
    ),
]


@pytest.mark.parametrize(("text", "check"), SEEN_INSTRUCTIONS)
def test_seen_bad_instructions_are_caught(text: str, check: str) -> None:
    found = instruction_problem(
        text,
        prompt_text=_synthesis_prompt_text(),
        reference_text=f"{REF_INSTRUCTION}\n{REF_RESPONSE}",
        feature=None,
    )
    assert found is not None, text
    assert found.name == check
    assert found.field == "instruction" and found.match_text


def test_the_feature_label_is_not_an_instruction() -> None:
    found = instruction_problem(
        "persuasive writing",
        prompt_text="Write new instructions",
        reference_text=REF_INSTRUCTION,
        feature="persuasive writing",
    )
    assert found is not None and found.name in ("feature-label", "not-a-request")
    assert (
        instruction_problem(
            "Write a persuasive letter asking your town to plant more trees.",
            prompt_text="exercise this aspect: persuasive writing",
            reference_text=REF_INSTRUCTION,
            feature="persuasive writing",
        )
        is None
    )


def test_copying_the_reference_itself_is_not_copying_the_prompt() -> None:
    """Words the reference shares with the prompt are the reference's, not the prompt's."""
    text = "Write a short poem about the sea for a child."
    prompt_text = f"Example: {text}\nWrite a new request."
    assert (
        instruction_problem(text, prompt_text=prompt_text, reference_text=text, feature=None)
        is None
    )


SEA_POEM = (
    "The moon is round and bright,\nit sails across the night.\nIt smiles on every wave,\n"
    "and on the sailors brave.\nThe stars all gather near,\nto keep the sky so clear.\n"
)
LOOPED = SEA_POEM + "The stars all gather near,\n" * 25


def test_a_loop_to_the_cap_is_cut_back_before_the_loop() -> None:
    """Issue 15: a poem coherent for six lines, then one line until the token cap."""
    assert degenerate(LOOPED) is not None
    start = loop_cut(LOOPED)
    assert start is not None and start >= len(SEA_POEM) - len("The stars all gather near,\n") - 40
    kept = cut_answer(LOOPED)
    assert kept is not None
    text, why = kept
    assert why == "loop"
    assert text.startswith("The moon is round and bright,")
    assert "to keep the sky so clear." in text
    assert degenerate(text) is None
    assert text.count("The stars all gather near") == 1


def test_an_answer_cut_at_the_cap_without_a_loop_keeps_its_complete_sentences() -> None:
    text = "Soak the beans overnight. Drain them and cover with fresh water. Then simmer for"
    kept = cut_answer(text)
    assert kept == ("Soak the beans overnight. Drain them and cover with fresh water.", "cap")
    assert cut_answer("Keep bread in a") is None  # nothing complete to keep


@pytest.mark.parametrize(
    ("answer", "check"),
    [
        ("I'm ready to help. What's your request?", "asks-back"),
        ("Sure! What would you like me to write about?", "asks-back"),
        ("Could you tell me more about what you need?", "asks-back"),
        ("Write a short poem about the sea for a child.", "restates-request"),
        ("The sea is deep. " * 40, "degenerate"),
        # Seen in the embedded default's accepted samples (demo and Self-Instruct runs):
        (
            "That's correct! Here's another version that includes additional tips:\n\n"
            "1. **Plan Everything**: Plan your entire day around what you can do.",
            "replies-to-feedback",
        ),
        (
            "I'm sorry for any confusion but as far as I know there's no specific item called "
            '"Furniture" available online right now.',
            "replies-to-feedback",
        ),
        (
            "I'm sorry for any misunderstanding, but as an AI designed to assist users, my "
            "primary function is to facilitate communication within our community.",
            "replies-to-feedback",
        ),
        ("Oh, my apologies! The sea is big and blue.", "replies-to-feedback"),
        (
            "I'm glad I could help clarify the instructions. Here's a revised version with some "
            "minor edits:\n\nThe sea is big and blue.",
            "replies-to-feedback",
        ),
    ],
)
def test_bad_answers_are_caught(answer: str, check: str) -> None:
    found = answer_problem(answer, REF_INSTRUCTION)
    assert found is not None and found.name == check


def test_an_apology_or_agreement_inside_an_answer_is_not_a_reply_opener() -> None:
    letter = (
        "Dear Officer,\n\nI am writing to appeal the parking ticket. I apologize for any "
        "inconvenience and enclose my permit."
    )
    assert answer_problem(letter, "Write a letter appealing a parking ticket.") is None
    quiz = "The sea covers most of the planet. That's correct: about 71 percent of it."
    assert answer_problem(quiz, "Tell me a fact about the sea.") is None


def test_a_request_about_the_reader_s_things_is_not_personal() -> None:
    for request in (
        "How do you plan a trip to Japan on a budget?",
        "What are some fun ideas to make your home look amazing while you're on vacation?",
        "Write a letter to your landlord asking for a repair.",
        "What are some ways to make your favorite dish more affordable?",
        "What if you could spend your life never sleeping?",
    ):
        assert personal_question(request) is None, request


def test_a_question_asked_for_is_not_an_ask_back() -> None:
    assert answer_problem("What is the capital of France?", "Write a quiz question.") is None


async def test_screening_cuts_or_fails_by_the_rule() -> None:
    cut = await screen_answer(
        LOOPED, "length", REF_INSTRUCTION, checks=True, loop_rule="cut", relevance_min=None
    )
    assert cut.cut == "loop" and cut.problem is None and cut.error is None
    failed = await screen_answer(
        LOOPED, "length", REF_INSTRUCTION, checks=True, loop_rule="fail", relevance_min=None
    )
    assert failed.error is not None
    looping = await screen_answer(
        LOOPED, "stop", REF_INSTRUCTION, checks=True, loop_rule="cut", relevance_min=None
    )
    assert looping.problem is not None and looping.problem.name == "degenerate"


def test_a_refinement_loses_the_line_announcing_it() -> None:
    text = "Here's a revised version of the advice:\n\nStart early and plan each day."
    assert without_revision_note(text) == "Start early and plan each day."
    seen = "That's exactly what I'm looking for! Here's a more detailed response:\n\nPlan early."
    assert without_revision_note(seen) == "Plan early."
    kept = "Sure! Here are some tips:\n1. Start early."
    assert without_revision_note(kept) == kept
    seen = (
        "To address the question more accurately, here\u2019s an alternative response:\n\n"
        "When asked to design a flyswatter, I would suggest a mesh."
    )
    assert without_revision_note(seen).startswith("When asked")
    assert without_revision_note("\n" + seen).startswith("When asked")
    twice = "Here's a revised version:\n\n" + seen
    assert without_revision_note(twice).startswith("When asked")


async def test_a_refinement_that_replies_to_its_feedback_fails_even_as_a_note() -> None:
    refined = "That's correct! Here's another version that includes tips:\n\n1. Plan early."
    seen = await screen_answer(
        refined,
        "stop",
        "How do I plan a wedding?",
        checks=True,
        loop_rule="cut",
        relevance_min=None,
        before="Start with a list of guests.",
    )
    assert seen.problem is not None and seen.problem.name == "replies-to-feedback"


def _real_pairs(shared: Path) -> list[tuple[str, str]]:
    lima = json.loads((shared / "seeds" / "lima.json").read_text())
    pairs = [(x["instruction"], x["output"]) for x in lima if not x.get("history")]
    for line in (shared / "seeds" / "self_instruct_seed_tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        inst = task["instances"][0]
        pairs.append((f"{task['instruction']} {inst['input']}".strip(), inst["output"]))
    return pairs


def test_people_s_own_data_is_rarely_flagged(shared_data: Path) -> None:
    """LIMA and Self-Instruct, written by people: under 1 % of their requests and answers
    fail a check (the checks must not throw away good data)."""
    pairs = _real_pairs(shared_data)
    bad_requests = [
        q
        for q, _ in pairs
        if not_a_request(q) or personal_question(q) or degenerate(q, "instruction")
    ]
    bad_answers = [a for q, a in pairs if answer_problem(a, q)]
    assert len(pairs) > 1100
    assert len(bad_requests) / len(pairs) < 0.01, bad_requests[:5]
    assert len(bad_answers) / len(pairs) < 0.01, bad_answers[:5]
