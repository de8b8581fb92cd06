"""The LLM judge as a baseline: Refed's own judge (``nodes.judging``) on a configured model.

Two sources, said in the output: the records an earlier ``python -m graph.judge eval`` run
already judged (``runs/judge-eval/SET/judged.jsonl``, used when its criteria version is the
current one), or live calls on a small deterministic slice of the test set through an
OpenAI-compatible server (the pipeline's client layer and prompts, score only,
log-probability expectations as ``judge eval`` does).

Which server (``resolve_endpoint``): the one named on the command line; else the judge's or
the generator's endpoint from Refed's settings (``REFED_JUDGE_BASE_URL``, ``REFED_BASE_URL``,
``OPENAI_BASE_URL`` or the ``--config`` file); else, as Refed itself does, the embedded vLLM
CPU server, started for the run when vLLM is installed and its weights are prepared (not in a
``--quick`` run). With none, or one that does not answer ``/v1/models``, the baseline is
skipped with one line saying how to enable it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from judge.evaluate import compare_pairs, score_items
from judge.scoring import JudgeOptions
from judge.sets import HumanItem, HumanPair, HumanSet, load_items, load_pairs
from llm.client import LLMClient
from metric.data import Example, Pair, unit
from state.criteria import CriteriaSet
from state.judgements import Vote

OPTIONS = JudgeOptions(temperature=0.0, logprobs=5, rationale_chars=0, seed=0)
"""As the ``judge eval`` reports in runs/judge-eval were made: score only, log-probabilities."""


SKIP_HINT = (
    "pass --llm-base-url URL (an OpenAI-compatible /v1 endpoint), set REFED_BASE_URL, or "
    "--llm-base-url embedded to start the embedded vLLM CPU server"
)


@dataclass(frozen=True)
class Endpoint:
    """Where the baseline's calls go (``url`` None: skipped, ``note`` says why)."""

    url: str | None
    model: str
    note: str
    embedded: bool = False


def embedded_problem() -> str | None:
    """None when the embedded server can be started here; else why not, in a few words."""
    from embedded import is_prepared, model_dir, vllm_available

    if not vllm_available():
        return "vLLM is not installed"
    if not is_prepared(model_dir()):
        return f"the embedded model is not prepared in {model_dir()} (python -m embedded)"
    return None


def resolve_endpoint(
    flag: str | None, model: str | None = None, *, embedded_fallback: bool = True
) -> Endpoint:
    """The LLM judge's endpoint for the baseline: the flag (a URL, ``embedded`` or ``none``),
    else Refed's settings (checked with ``GET /v1/models``), else the embedded server when
    ``embedded_fallback`` and it can run here."""
    if flag is not None and flag.strip().lower() in ("", "none", "off"):
        return Endpoint(None, model or "", "LLM-judge baseline: off (--llm-base-url none)")
    if flag is not None and flag.strip().lower() == "embedded":
        from embedded import DEFAULT_MODEL_NAME

        return Endpoint(None, model or DEFAULT_MODEL_NAME, "embedded", embedded=True)
    url = flag
    if url is None:
        from state.settings import RefedSettings

        try:
            settings = RefedSettings()
        except ValueError:
            settings = None
        if settings is not None:
            url = settings.judge_base_url or next(iter(settings.base_urls), None)
            model = model or settings.judge_model or settings.model
    if not url:
        from embedded import DEFAULT_MODEL_NAME

        why = "not started by --quick" if not embedded_fallback else embedded_problem()
        if why is None:
            return Endpoint(None, model or DEFAULT_MODEL_NAME, "embedded", embedded=True)
        return Endpoint(
            None,
            model or "",
            f"LLM-judge baseline: skipped (no endpoint configured; embedded server: {why}). "
            f"To enable it: {SKIP_HINT}.",
        )
    model = model or "smollm2"
    problem = preflight(url)
    if problem:
        note = f"LLM-judge baseline: skipped ({url} {problem}). To enable it: {SKIP_HINT}."
        return Endpoint(None, model, note)
    return Endpoint(url, model, f"LLM-judge baseline: {model} at {url}")


def preflight(url: str, timeout: float = 5.0) -> str | None:
    """None when ``url`` answers ``GET /v1/models``; else what went wrong, in a few words."""
    import httpx

    root = url.rstrip("/").removesuffix("/v1")
    try:
        r = httpx.get(f"{root}/v1/models", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"does not answer ({type(exc).__name__})"
    if r.status_code != 200:
        return f"answers /v1/models with HTTP {r.status_code}"
    return None


@dataclass
class LLMConfig:
    base_url: str | None = None
    model: str = "smollm2"
    slice_records: int = 40
    """Live calls: at most this many records (whole sources) per pointwise set."""
    slice_pairs: int = 40
    """Live calls: at most this many pairs (people's ties left out) per pairwise set."""
    concurrency: int = 8
    reuse_dir: Path | None = Path("runs/judge-eval")
    seed: int = 0


@dataclass
class LLMResult:
    pointwise: dict[str, dict[str, float]] = field(default_factory=dict)
    """Item id -> criterion -> score."""
    votes: dict[str, Vote] = field(default_factory=dict)
    """Pair key (``first|second``) -> verdict."""
    notes: dict[str, str] = field(default_factory=dict)
    """Set -> where its numbers come from."""
    errors: list[str] = field(default_factory=list)


def reused(folder: Path, cset: CriteriaSet) -> dict[str, dict[str, float]]:
    """Scores from an earlier ``judge eval`` run, if it used this criteria version."""
    config, judged = folder / "config.json", folder / "judged.jsonl"
    if not (config.is_file() and judged.is_file()):
        return {}
    if json.loads(config.read_text()).get("criteria_version") != cset.version:
        return {}
    out: dict[str, dict[str, float]] = {}
    for line in judged.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("judge"):
            out[row["id"]] = {k: float(v["score"]) for k, v in row["judge"]["scores"].items()}
    return out


def make_llm_client(cfg: LLMConfig) -> LLMClient | None:
    """The judge's client layer (nodes.llm) on the configured server; None: no server."""
    if not cfg.base_url:
        return None
    from llm.factory import judge_client as make_client
    from state.settings import RefedSettings

    settings = RefedSettings(base_url=cfg.base_url, model=cfg.model, concurrency=cfg.concurrency)
    return make_client(settings, cfg.base_url, cfg.model)


def slice_items(examples: Sequence[Example], n: int, seed: int) -> list[str]:
    """Item ids of a deterministic slice: whole sources in a seeded order, about ``n`` items."""
    groups: dict[str, set[str]] = {}
    for ex in examples:
        groups.setdefault(ex.group, set()).add(ex.item)
    chosen: list[str] = []
    for g in sorted(groups, key=lambda g: unit(seed, "llm", g)):
        if len(chosen) >= n:
            break
        chosen.extend(sorted(groups[g]))
    return chosen


async def run_pointwise(
    hset: HumanSet,
    cset: CriteriaSet,
    examples: Sequence[Example],
    cfg: LLMConfig,
    client: LLMClient | None,
) -> tuple[dict[str, dict[str, float]], str, list[str]]:
    """LLM scores for the test examples of one pointwise set, and where they come from."""
    wanted = {ex.item for ex in examples if ex.set == hset.name}
    if cfg.reuse_dir is not None:
        old = reused(cfg.reuse_dir / hset.name, cset)
        hits = {k: v for k, v in old.items() if k in wanted}
        if hits:
            note = (
                f"reused {len(hits)} records judged by `judge eval` ({cfg.reuse_dir / hset.name})"
            )
            return hits, note, []
    if client is None or cfg.slice_records <= 0:
        return {}, "not run", []
    ids = set(slice_items([e for e in examples if e.set == hset.name], cfg.slice_records, cfg.seed))
    items: list[HumanItem] = [it for it in load_items(hset) if it.id in ids]
    scored = await score_items(client, cset, items, OPTIONS, per_criterion=False)
    out = {s.id: s.result.values() for s in scored if s.result is not None}
    errors = [f"{s.id}: {s.error}" for s in scored if s.error]
    note = f"live on {cfg.model}: {len(out)} records (slice of whole sources), {len(errors)} failed"
    return out, note, errors


async def run_pairs(
    hset: HumanSet,
    cset: CriteriaSet,
    pairs: Sequence[Pair],
    examples: dict[str, Example],
    cfg: LLMConfig,
    client: LLMClient | None,
) -> tuple[dict[str, Vote], str, list[str]]:
    """LLM verdicts (asked in both orders) on a slice of one pairwise set's test pairs."""
    if client is None or cfg.slice_pairs <= 0:
        return {}, "not run", []
    mine = [p for p in pairs if p.set == hset.name and p.label != "tie"]
    mine = sorted(mine, key=lambda p: unit(cfg.seed, "llm", p.first))[: cfg.slice_pairs]
    human = {hp.id: hp for hp in load_pairs(hset)}
    todo: list[tuple[Pair, HumanPair]] = []
    for p in mine:
        hp = human[examples[p.first].item.rsplit("|", 1)[0]]
        todo.append((p, hp))
    compared = await compare_pairs(client, cset, [hp for _, hp in todo], OPTIONS)
    votes = {
        f"{p.first}|{p.second}": c.verdict.winner
        for (p, _), c in zip(todo, compared, strict=True)
        if c.verdict is not None
    }
    errors = [f"{c.id}: {c.error}" for c in compared if c.error]
    note = f"live on {cfg.model}: {len(votes)} pairs, asked in both orders, {len(errors)} failed"
    return votes, note, errors
