"""Validity checks: cheap, deterministic tests a candidate must pass before any judge call.

A small model fails in a few recognisable ways, and no judge of its size notices them
(see BENCHMARKS.md). These checks catch them from the text alone:

- an instruction that is not a new request: it copies the prompt's own wording (word
  n-grams shared with the rendered prompt but not with the reference's text), is the
  feature label it was asked about, is too short to be a request, opens like an answer
  ("Here is ...", "I'm ready to help"), is markup and symbols rather than words, or asks
  the assistant about its own life and tastes ("What are your hobbies?"), which a small
  model answers by making up a person or apologising;
- degenerate text: a repetition loop (a sentence or a run of words said again and
  again), found by repeated word n-grams, repeated lines and a low zlib compression ratio;
- an answer that asks back ("What's your request?") or restates the request instead
  of answering it, or one that opens as a reply to a conversation that never happened
  ("That's correct! Here's another version", "I'm sorry for any confusion"): a refinement's
  leftover, or the model apologising for a request it took as aimed at itself.

Each check returns a :class:`state.records.QualityFilter` naming the check, the field,
what it measured and the offending text, or None. :func:`loop_cut` finds where a loop
starts, so an answer cut off at its token cap can be kept up to its last complete
sentence before the loop.

This module may import ``state`` only.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from state.records import QualityFilter

_WORD = re.compile(r"[^\W_]+")

MIN_REQUEST_WORDS = 3
MIN_REQUEST_CHARS = 12
COPY_NGRAM = 4
COPY_SHARE = 0.5
"""An instruction copies the prompt when at least this share of its word 4-grams appear
in the prompt but not in the reference's own text."""
LOOP_NGRAM = 6
LOOP_SHARE = 0.3
"""Text is degenerate when this share of its word 6-grams repeat an earlier one..."""
LOOP_MIN_WORDS = 30
MIN_COMPRESSION = 0.2
"""...or when zlib shrinks it below this ratio (ordinary prose: 0.4-0.6)."""
MIN_COMPRESSION_CHARS = 400
REPEATED_LINE_TIMES = 4
REPEATED_LINE_WORDS = 5
RESTATE_ROUGE = 0.7
"""An answer restates its request when their word sequences overlap this much (ROUGE-L F1)."""

ANSWER_OPENERS = (
    "sure",
    "certainly",
    "of course",
    "i'm here",
    "i am here",
    "i'm ready",
    "i am ready",
    "i'd be happy",
    "i would be happy",
    "as an ai",
    "thank you",
    "thanks for",
    "great question",
    "the answer",
)
"""How an answer or a chatbot's greeting starts; a request does not start so."""

_ASK_BACK = re.compile(
    r"what(?:'s| is) your (?:request|question)"
    r"|what (?:would|do) you (?:like|want|need)"
    r"|how (?:can|may|could) i (?:help|assist)"
    r"|(?:i'm|i am) (?:ready|here|happy) to help"
    r"|please (?:provide|share|tell me|give me|specify|clarify)"
    r"|(?:could|can) you (?:please )?(?:provide|share|tell me|give me|specify|clarify)"
    r"|let me know (?:what|which|how|if)"
    r"|what (?:topic|subject) would",
    re.IGNORECASE,
)
ASK_BACK_MAX_WORDS = 60
"""An answer this short that asks back is a question, not an answer."""


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _excerpt(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _filter(
    name: str, field: str, method: str, text: str, score: float | None = None
) -> QualityFilter:
    return QualityFilter.model_validate(
        {
            "name": name,
            "method": method,
            "score": None if score is None else round(score, 3),
            "field": field,
            "match_text": _excerpt(text),
            "source": "check",
        }
    )


# --- instructions -------------------------------------------------------------------------


def copies_prompt(instruction: str, prompt_text: str, reference_text: str) -> QualityFilter | None:
    """The instruction reuses the prompt's wording (not the reference's): its word 4-grams
    are mostly found in the rendered prompt minus what the reference itself says."""
    tokens = words(instruction)
    if len(tokens) < COPY_NGRAM:
        shared = " ".join(tokens)
        own = " ".join(words(reference_text))
        if shared and shared in " ".join(words(prompt_text)) and shared not in own:
            return _filter("copies-prompt", "instruction", "whole text in the prompt", instruction)
        return None
    grams = _ngrams(tokens, COPY_NGRAM)
    prompt_grams = set(_ngrams(words(prompt_text), COPY_NGRAM))
    own_grams = set(_ngrams(words(reference_text), COPY_NGRAM))
    copied = sum(1 for g in grams if g in prompt_grams and g not in own_grams)
    share = copied / len(grams)
    if share >= COPY_SHARE:
        return _filter(
            "copies-prompt", "instruction", f"{COPY_NGRAM}-gram share", instruction, share
        )
    return None


def is_feature_label(instruction: str, feature: str | None) -> QualityFilter | None:
    """The instruction is the feature it was asked to exercise, or little more."""
    if not feature:
        return None
    got, label = words(instruction), words(feature)
    if label and (got == label or (set(got) <= set(label) and len(got) <= len(label) + 2)):
        return _filter("feature-label", "instruction", "label words only", instruction)
    return None


def not_a_request(instruction: str) -> QualityFilter | None:
    """Too short to be a request, opens like an answer, or is markup rather than words."""
    text = instruction.strip()
    tokens = words(text)
    if len(tokens) < MIN_REQUEST_WORDS or len(text) < MIN_REQUEST_CHARS:
        return _filter("not-a-request", "instruction", "too short", text, float(len(tokens)))
    lowered = text.casefold().lstrip("\"'*#-> ")
    if lowered.startswith(ANSWER_OPENERS):
        return _filter("not-a-request", "instruction", "opens like an answer", text)
    prose = without_code(text)
    letters = sum(ch.isalnum() or ch.isspace() for ch in prose)
    share = letters / max(1, len(prose))
    if share < 0.75 or _MARKUP.search(prose[:120]):
        return _filter("not-a-request", "instruction", "markup, not words", text, share)
    return None


_PERSONAL = re.compile(
    r"\bwhat(?:'s| is| are| was| were) your (?:own )?(?:favou?rite|hobb(?:y|ies))\b"
    r"|\byour (?:own )?(?:hobb(?:y|ies)|childhood|personal life)\b"
    r"|\byour own life\b"
    r"|\b(?:are|were) you (?:looking|planning|hoping) (?:to|on)\b"
    r"|\bdo you (?:plan|intend|hope) (?:on|to)\b"
    r"|\bwhat do you think (?:about|of) (?:yourself|your own)\b",
    re.IGNORECASE,
)
"""A question about the one asked: their favourite things, hobbies, own life, plans. Not
"your favourite dish" or "your life" alone: in a request those are mostly the reader's."""


def personal_question(instruction: str) -> QualityFilter | None:
    """The request asks the assistant about itself (its hobbies, favourites, life or plans)
    rather than for something done or explained. People write such requests now and then
    (1 of 1,175 in LIMA and Self-Instruct); the embedded model wrote 7 of 63 distinct ones
    in a demo and a Self-Instruct run, and answered them with a made-up life or an
    apology."""
    found = _PERSONAL.search(instruction)
    if found is None:
        return None
    return _filter(
        "personal-question",
        "instruction",
        f"asks the assistant about itself: {found[0]!r}",
        instruction,
    )


_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)
_MARKUP = re.compile(r"^[^\w\s\"'($¿¡]|[{}=]{2}|=\{|\w+(?:[-_]\w+){3,}")
"""Starts with a symbol, holds JSON-ish pairs, or joins words by dashes or underscores."""


def without_code(text: str) -> str:
    """``text`` without Markdown code (fenced blocks and inline spans)."""
    return _CODE.sub(" ", text)


def instruction_problem(
    instruction: str, *, prompt_text: str, reference_text: str, feature: str | None
) -> QualityFilter | None:
    """The first check the instruction fails, or None."""
    return (
        not_a_request(instruction)
        or is_feature_label(instruction, feature)
        or personal_question(instruction)
        or copies_prompt(instruction, prompt_text, reference_text)
        or degenerate(instruction, "instruction")
    )


# --- degenerate text ------------------------------------------------------------------------


def repeated_share(tokens: Sequence[str], n: int = LOOP_NGRAM) -> float:
    """Share of word n-grams that repeat an earlier one."""
    grams = _ngrams(tokens, n)
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / max(1, len(raw))


def degenerate(text: str, field: str = "response") -> QualityFilter | None:
    """A repetition loop: repeated lines, repeated word 6-grams, or text that compresses
    far better than prose does."""
    prose = without_code(text)
    lines = [
        ln.strip().casefold() for ln in prose.splitlines() if len(words(ln)) >= REPEATED_LINE_WORDS
    ]
    if lines:
        times = Counter(lines).most_common(1)[0][1]
        if times >= REPEATED_LINE_TIMES:
            return _filter("degenerate", field, f"a line said {times} times", text, float(times))
    tokens = words(prose)
    if len(tokens) >= LOOP_MIN_WORDS:
        share = repeated_share(tokens)
        if share >= LOOP_SHARE:
            return _filter("degenerate", field, f"repeated {LOOP_NGRAM}-gram share", text, share)
    if len(prose) >= MIN_COMPRESSION_CHARS:
        ratio = compression_ratio(prose)
        if ratio < MIN_COMPRESSION:
            return _filter("degenerate", field, "zlib compression ratio", text, ratio)
    return None


_SENTENCE_END = re.compile(r"(?<=[^\d\s][.!?])[\"')\]]*(?=\s)|\n")
"""After a sentence's final mark (not a list number's "6."), or a line break."""


def loop_cut(text: str, n: int = LOOP_NGRAM) -> int | None:
    """Where a repetition loop starts: the offset of the first word n-gram that recurs and
    after which the text keeps repeating itself; None when there is no loop."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(unicodedata.normalize("NFKC", text))]
    tokens = [text[a:b].casefold() for a, b in spans]
    if len(tokens) < 2 * n:
        return None
    last_seen: dict[tuple[str, ...], int] = {}
    for i, gram in enumerate(_ngrams(tokens, n)):
        if gram in last_seen and repeated_share(tokens[i:], n) >= 0.5:
            # The text repeats with period p from here on; the loop began where that
            # periodicity began (walking back while each word equals the one p later).
            period, k = i - last_seen[gram], i
            while k > 0 and tokens[k - 1] == tokens[k - 1 + period]:
                k -= 1
            # Say the repeated unit once, unless the text said it before the loop began.
            unit = " " + " ".join(tokens[k : k + period]) + " "
            said = unit in " " + " ".join(tokens[:k]) + " "
            return spans[k][0] if said else spans[min(k + period, i)][0]
        last_seen[gram] = i
    return None


def last_sentence_end(text: str, limit: int | None = None) -> int:
    """The end of the last complete sentence (or line) in ``text[:limit]``; 0 if none."""
    head = text if limit is None else text[:limit]
    ends = [m.start() for m in _SENTENCE_END.finditer(head)]
    stripped = head.rstrip()
    if re.search(r"[^\d\s][.!?]$", stripped) and head[len(stripped) :]:
        ends.append(len(stripped))
    ends = [e for e in ends if head[:e].strip()]
    return ends[-1] if ends else 0


def cut_answer(text: str) -> tuple[str, Literal["loop", "cap"]] | None:
    """A cut-off answer kept up to its last complete sentence before the loop (or before the
    cap when there is none): (text, what was cut), or None when nothing usable is left."""
    start = loop_cut(text)
    end = last_sentence_end(text, start)
    kept = text[:end].rstrip()
    if len(words(kept)) < MIN_REQUEST_WORDS:
        return None
    return kept, "loop" if start is not None else "cap"


# --- answers ------------------------------------------------------------------------------


QUESTION_ONLY_MAX_WORDS = 30
"""A reply this short that ends on a question asks instead of answering."""


def asks_back(answer: str, request: str = "") -> QualityFilter | None:
    """A short reply that asks for the request (or more of it) instead of answering. (A
    request for a question may of course be answered by one.)"""
    tokens = words(answer)
    if len(tokens) <= ASK_BACK_MAX_WORDS and _ASK_BACK.search(answer):
        return _filter("asks-back", "response", "asks for the request", answer)
    wants_question = bool({"question", "questions", "ask"} & set(words(request)))
    short = len(tokens) <= QUESTION_ONLY_MAX_WORDS
    if short and answer.rstrip().endswith("?") and not wants_question:
        return _filter("asks-back", "response", "a short reply ending on a question", answer)
    return None


_REPLY_OPENER = re.compile(
    r"^\W*(?:\w+[,!]\s+)?(?:"
    r"(?:that's|that is|you're|you are)(?: absolutely| completely| quite)? (?:correct|right)\b"
    r"|(?:great|good|nice) job\b|well done\b"
    r"|here(?:'s|\u2019s| is) (?:another|a new|an alternative) (?:version|take|answer|response)\b"
    r"|(?:(?:i'm|i\u2019m|i am) (?:so |very )?sorry|i apologi[sz]e) for (?:any|the|my) "
    r"(?:confusion|misunderstanding|inconvenience|mistake|error|oversight)"
    r"|my apologies\b|sorry for the confusion\b"
    r"|thank(?:s| you) for (?:the|your) (?:feedback|advice|correction|suggestions?)\b"
    r"|(?:(?:i'm|i\u2019m|i am) )?glad (?:i could|i was able to|to) (?:help|clarify)\b"
    r")",
    re.IGNORECASE,
)
"""How a reply to someone's earlier turn opens: agreeing with a correction, apologising for
a confusion, thanking for feedback, offering "another version". An answer to a new request
has no earlier turn to reply to."""


def replies_to_feedback(answer: str) -> QualityFilter | None:
    """The answer opens as a reply to a conversation, not to its request."""
    if _REPLY_OPENER.search(answer):
        return _filter(
            "replies-to-feedback", "response", "opens as a reply to an earlier turn", answer
        )
    return None


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two word sequences (longest common subsequence)."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    return 2 * lcs / (len(a) + len(b))


def restates(answer: str, request: str) -> QualityFilter | None:
    """The answer says the request over again (their word sequences mostly coincide)."""
    got, asked = words(answer), words(request)
    if not got or len(got) > 3 * len(asked) + 10:
        return None
    score = rouge_l(got, asked)
    if score >= RESTATE_ROUGE:
        return _filter("restates-request", "response", "ROUGE-L F1 with the request", answer, score)
    return None


def answer_problem(answer: str, request: str) -> QualityFilter | None:
    """The first check the answer fails, or None."""
    return (
        asks_back(answer, request)
        or replies_to_feedback(answer)
        or restates(answer, request)
        or degenerate(answer, "response")
    )
