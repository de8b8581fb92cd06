"""The one configuration model, shared by the batch CLI, the service and Studio.

Precedence, highest first: command-line flags, environment (``REFED_*``, plus the
OpenAI-standard ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``), a TOML config file
(``--config`` or ``REFED_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from state.judgements import JudgeBar
from state.records import FeedbackMode


def _path_list(value: Any) -> Any:
    """A list from a flag or variable: comma-separated, or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _judge_bar(value: Any) -> Any:
    """A judge bar as its canonical text: ``3``, or ``reference:MARGIN``."""
    if isinstance(value, int | float | str):
        return JudgeBar.parse(value).text
    return value


def _name_map(value: Any) -> Any:
    """``a=b,c=d`` (or a JSON object) as a dict."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            import json

            return json.loads(text)
        pairs = [p.strip() for p in text.split(",") if p.strip()]
        out: dict[str, str] = {}
        for pair in pairs:
            key, sep, val = pair.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ValueError(f"expected TASK=FILE, got {pair!r}")
            out[key.strip()] = val.strip()
        return out
    return value


def endpoint_urls(value: str | None) -> list[str]:
    """The endpoints in a ``base_url`` value: one URL, or several separated by commas."""
    if not value:
        return []
    urls: list[str] = []
    for part in value.replace("\n", ",").split(","):
        url = part.strip()
        if url and url not in urls:
            urls.append(url)
    return urls


def check_endpoint(url: str, where: str) -> str:
    """``url`` if it is an http(s) address with a host; else a ValueError naming ``where``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise ValueError(f"{where}: {url!r} is not an http(s) URL such as http://host:8000/v1")
    return url


def _url_list(value: Any) -> Any:
    """Several endpoints (a TOML list, or repeated flags) as one comma-separated string."""
    if isinstance(value, list | tuple):
        return ",".join(str(v).strip() for v in value if str(v).strip()) or None
    return value


def redact_dsn(dsn: str | None) -> str | None:
    """A connection string with its password replaced by ``***`` (URL or key=value form)."""
    if dsn is None:
        return None
    import re

    dsn = re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", dsn)
    return re.sub(r"(\bpassword\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


class RefedSettings(BaseSettings):
    """Everything a run, the service or Studio can be told."""

    model_config = SettingsConfigDict(env_prefix="REFED_", extra="ignore", populate_by_name=True)

    # --- the LLM endpoint -------------------------------------------------------
    base_url: Annotated[str | None, BeforeValidator(_url_list)] = Field(
        default=None,
        validation_alias=AliasChoices("REFED_BASE_URL", "OPENAI_BASE_URL", "base_url"),
        description="OpenAI-compatible endpoint (…/v1); several: repeat the flag or separate "
        "them with commas (balanced, with failover). Unset: start the embedded vLLM CPU server.",
    )
    base_urls_file: Path | None = Field(
        default=None,
        description="A file of endpoints, one URL a line (# comments), added to base_url.",
    )
    model: str = Field(default="smollm2", description="Model name the server knows.")
    api_key: SecretStr = Field(
        default=SecretStr("EMPTY"),
        validation_alias=AliasChoices("REFED_API_KEY", "OPENAI_API_KEY", "api_key"),
        description="API key for the endpoint (never logged).",
    )
    concurrency: int = Field(
        default=16,
        ge=1,
        description="Cap on LLM requests in flight per endpoint; the limit adapts below it "
        "(starts at 16, grows while latency holds, holds when latency doubles, halves on "
        "429/503/504/timeouts).",
    )
    fixed_concurrency: bool = Field(
        default=False, description="Keep every endpoint at --concurrency (no adaptive limit)."
    )
    timeout: float = Field(default=120.0, gt=0, description="Seconds per LLM request.")
    max_retries: int = Field(default=4, ge=0, description="Retries per LLM request (backoff).")
    circuit_open_after: float = Field(
        default=300.0,
        ge=0,
        description="Stop the run (exit status 75, resumable) once the LLM server has failed "
        "every request for this many seconds; meanwhile calls wait instead of failing their "
        "candidates. 0: off (calls fail after their retries).",
    )

    # --- the method ---------------------------------------------------------------
    feedback_mode: FeedbackMode = Field(
        default="reference",
        description="reference: feedback once per reference (the method); sample: per new "
        "sample (baseline); none: no feedback.",
    )
    per_reference: int = Field(default=4, ge=1, le=200, description="New instructions per ref.")
    judge_bar: Annotated[str, BeforeValidator(_judge_bar)] = Field(
        default="3",
        description="What a sample's mean judge score must reach: a number (e.g. 3.0 on the "
        "1-5 scale), or reference[:MARGIN] (within MARGIN, default 0.5, of the score the judge "
        "gives the sample's own reference pair).",
    )
    max_revisions: int = Field(default=1, ge=0, le=5, description="Revise rounds under the bar.")
    profile: str | None = Field(
        default=None,
        description="Generation profile: a built-in name (smollm2) or a TOML file of settings "
        "and prompt variants tuned for a model; settings given as flags, environment or "
        "config file win over it. Unset: smollm2 with the embedded server, none otherwise.",
    )
    prompt_variants: Annotated[dict[str, str], NoDecode, BeforeValidator(_name_map)] = Field(
        default_factory=dict,
        description="Prompt files to use instead of the defaults, TASK=FILE pairs separated by "
        "commas (e.g. respond=small/respond); usually set by a profile.",
    )

    # --- sampling: the generator (synthesis, answers, refinement, feedback) ---------------
    temperature: float = Field(
        default=1.0, ge=0, le=2, description="Sampling temperature of answers and refinements."
    )
    synthesis_temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Temperature of new instructions (unset: temperature).",
    )
    feedback_temperature: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Temperature of the feedback calls (analysis, distillation, sample feedback).",
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling.")
    min_p: float | None = Field(
        default=None, ge=0, le=1, description="Drop tokens under this share of the top one (vLLM)."
    )
    top_k: int | None = Field(default=None, ge=-1, description="Sample from the top K (vLLM).")
    repetition_penalty: float | None = Field(
        default=None,
        gt=0,
        le=3,
        description="Penalise tokens already in prompt or answer (vLLM; 1.0: none).",
    )
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    max_tokens: int = Field(default=512, ge=16, description="Completion cap for free text.")
    respond_max_tokens: int | None = Field(
        default=None, ge=16, description="Cap on a first answer (unset: max_tokens)."
    )
    refine_max_tokens: int | None = Field(
        default=None, ge=16, description="Cap on a refined answer (unset: max_tokens)."
    )
    line_max_chars: int | None = Field(
        default=None,
        ge=8,
        description="Structured answers in the line form (prompt variants that use it): no "
        "value longer than this many characters, so a small model cannot ramble to the cap.",
    )
    synthesis_mode: Literal["list", "sampled"] = Field(
        default="list",
        description="list: each call returns a list of new instructions (JSON); sampled: each "
        "completion is one instruction, n completions per request (small models).",
    )
    synthesis_oversample: float = Field(
        default=1.0,
        ge=1,
        le=5,
        description="Draft this many times the instructions needed, so those the validity "
        "checks drop are replaced without another round.",
    )
    synthesis_max_tokens: int = Field(
        default=160, ge=16, description="Cap per new instruction asked for."
    )
    analysis_max_tokens: int = Field(default=400, ge=16, description="Cap per analysis call.")
    distill_max_tokens: int = Field(default=500, ge=16, description="Cap on distillation.")
    feedback_max_tokens: int = Field(
        default=300, ge=16, description="Cap on a sample's feedback (sample mode)."
    )
    seed: int = Field(default=0, description="Base seed; each request derives its own.")

    # --- sampling: the judge ----------------------------------------------------------------
    judge_temperature: float = Field(default=0.0, ge=0, le=2)
    judge_top_p: float | None = Field(default=None, gt=0, le=1)
    judge_min_p: float | None = Field(default=None, ge=0, le=1)
    judge_top_k: int | None = Field(default=None, ge=-1)
    judge_repetition_penalty: float | None = Field(default=None, gt=0, le=3)
    judge_frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    judge_presence_penalty: float | None = Field(default=None, ge=-2, le=2)

    # --- validity checks (before any judge call) --------------------------------------------
    checks: bool = Field(
        default=True,
        description="Reject, before judging, instructions that copy the prompt or are not "
        "requests, and answers that loop, ask back or restate the request (dataset/validity.py).",
    )
    relevance_min: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Reject an answer whose embedding similarity (all-MiniLM-L6-v2, cosine) "
        "with its request is under this; unset: no relevance check.",
    )
    loop_rule: Literal["cut", "fail"] = Field(
        default="cut",
        description="An answer cut off at its token cap: cut (keep it up to the last complete "
        "sentence before the loop or the cap, marked in the record) or fail the candidate.",
    )

    # --- the metric judge ---------------------------------------------------------------
    judge_base_url: Annotated[str | None, BeforeValidator(_url_list)] = Field(
        default=None,
        description="The judge's own endpoint (…/v1), or several separated by commas; "
        "default: the generator's.",
    )
    judge_model: str | None = Field(
        default=None, description="The judge's model; default: the generator's."
    )
    judge_concurrency: int | None = Field(
        default=None, ge=1, description="Judge requests in flight (own endpoint or model only)."
    )
    judge_criteria: str = Field(
        default="instruction",
        description="Criteria set: a built-in name (instruction, summeval, topical_chat, "
        "data2text) or a TOML file.",
    )
    judge_logprobs: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Top log-probabilities asked per token; scores become expectations over "
        "the scale. 0: use the sampled score.",
    )
    judge_rationale_chars: int = Field(
        default=300, ge=0, le=1000, description="Cap on the judge's rationale (0: score only)."
    )
    judge_per_criterion: bool = Field(
        default=False,
        description="One judge call per criterion instead of one call scoring all of them.",
    )
    judge_backend: Literal["llm", "encoder"] = Field(
        default="llm",
        description="llm: the LLM judge; encoder: the trained metric model (python -m metric) "
        "at judge_encoder.",
    )
    judge_encoder: str = Field(
        default="runs/metric/model",
        description="judge_backend=encoder: a saved metric folder (in-process) or the URL of "
        "a vLLM server serving it (/score).",
    )
    pairwise_filter: bool = Field(
        default=False,
        description="Also require the improved response to beat the first one (pairwise, "
        "asked in both orders): the paper's filter.",
    )

    # --- the batch run ------------------------------------------------------------
    seeds: str | None = Field(default=None, description="Seed file, folder or hf:NAME.")
    out: Path = Field(default=Path("runs/default"), description="Run folder.")
    samples: int | None = Field(
        default=None, ge=1, description="Stop starting references once this many are accepted."
    )
    limit: int | None = Field(default=None, ge=1, description="Use only the first N references.")
    workers: int | None = Field(
        default=None, ge=1, description="References in flight (default: from concurrency)."
    )
    processes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Worker processes that run the graph (each with its own checkpoint file, "
        "the in-flight budget split between them); this process keeps the ledgers. More "
        "than 1 uses more cores where one process's CPU is the limit (many requests in "
        "flight, fast servers). Fixed when a run starts; unset: the run's own, or for a "
        "new run one per 32 requests in flight (concurrency x endpoints), at most one "
        "per core.",
    )
    on_bad_record: Literal["fail", "skip"] = Field(default="fail")
    force_new: bool = Field(default=False, description="Start over in an existing run folder.")
    durability: Literal["sync", "async", "exit"] = Field(default="async")
    store: str | None = Field(
        default=None,
        description="postgresql://USER:PASSWORD@HOST:PORT/DB: keep checkpoints, the run's "
        "ledgers and the service's feedback cache in Postgres, shared by several graph.run "
        "workers on one run (pip install -e '.[postgres]'). Unset: SQLite and files.",
    )
    store_lease: float = Field(
        default=60.0,
        ge=1,
        description="store=postgres: seconds a worker's claim on a reference lasts without "
        "a heartbeat (sent every third of it); a dead worker's references go to the others "
        "after it.",
    )

    # --- quality gates (dataset/quality) ----------------------------------------------------
    near_dup: Literal["rouge-l", "minhash", "off"] = Field(
        default="rouge-l",
        description="Near-duplicate control of new instructions against kept ones and the "
        "seeds: rouge-l (exact ROUGE-L, pruned index), minhash (MinHash-LSH candidates, "
        "ROUGE-L verified: less CPU, more memory, may miss a few) or off.",
    )
    near_dup_threshold: float = Field(
        default=0.7,
        ge=0,
        lt=1,
        description="Drop an instruction whose ROUGE-L F1 with a kept instruction or a seed "
        "is above this (Self-Instruct: 0.7).",
    )
    minhash_jaccard: float = Field(
        default=0.5, gt=0, lt=1, description="near_dup=minhash: Jaccard threshold of the LSH."
    )
    minhash_perm: int = Field(
        default=128, ge=16, le=1024, description="near_dup=minhash: MinHash permutations."
    )
    decontaminate: Annotated[list[str], NoDecode, BeforeValidator(_path_list)] = Field(
        default_factory=list,
        description="Evaluation prompt sets to keep out of the data: files (JSONL, JSON, CSV, "
        "Parquet), comma-separated, each PATH or PATH#FIELD.",
    )
    decontam_ngram: int = Field(
        default=13,
        ge=4,
        le=64,
        description="Drop a sample sharing this many tokens in a row "
        "with a benchmark prompt (GPT-3: 13).",
    )
    decontam_rouge: float = Field(
        default=0.8,
        ge=0,
        lt=1,
        description="Drop an instruction whose ROUGE-L F1 with a benchmark prompt is above this.",
    )

    # --- the service (python -m serve) ----------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Service bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Service port.")
    service_token: SecretStr | None = Field(
        default=None, description="Bearer token the service requires (unset: no auth)."
    )
    service_db: Path = Field(
        default=Path("runs/service.sqlite"),
        description="SQLite file for the service's feedback cache and checkpoints.",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body.")
    max_samples_per_request: int = Field(default=20, ge=1, le=200)
    max_in_flight_requests: int = Field(
        default=8, ge=1, description="Synthesis requests at once; more get 503 + Retry-After."
    )
    shutdown_grace: int = Field(
        default=30,
        ge=0,
        description="On SIGTERM the service stops accepting connections and gives the "
        "requests in flight this many seconds to finish; then it cancels the rest.",
    )
    log_level: str = Field(default="info")

    @model_validator(mode="after")
    def _read_base_urls_file(self) -> RefedSettings:
        """Fold the endpoints of ``base_urls_file`` into ``base_url`` (read once, here)."""
        if self.base_urls_file is None:
            return self
        try:
            lines = self.base_urls_file.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"base_urls_file {self.base_urls_file}: {exc}") from exc
        found = []
        for number, line in enumerate(lines, 1):
            url = line.split("#", 1)[0].strip()
            if url:
                found.append(check_endpoint(url, f"{self.base_urls_file}, line {number}"))
        urls = endpoint_urls(",".join([self.base_url or "", *found]))
        if not urls:
            raise ValueError(f"base_urls_file {self.base_urls_file}: no endpoint in it")
        self.base_url = ",".join(urls)
        return self

    @model_validator(mode="after")
    def _check_processes(self) -> RefedSettings:
        if self.store and self.processes and self.processes > 1:
            raise ValueError(
                "processes: with store (Postgres) start several graph.run workers instead; "
                "--processes shares one SQLite run folder between processes"
            )
        return self

    @model_validator(mode="after")
    def _check_base_urls(self) -> RefedSettings:
        for url in endpoint_urls(self.base_url):
            check_endpoint(url, "base_url")
        for url in endpoint_urls(self.judge_base_url):
            check_endpoint(url, "judge_base_url")
        return self

    @property
    def base_urls(self) -> list[str]:
        """Every configured endpoint (empty: the embedded server). The one place a
        ``base_url`` (several URLs separated by commas) is split."""
        return endpoint_urls(self.base_url)

    @property
    def judge_base_urls(self) -> list[str]:
        """The judge's own endpoints (empty: the generator's)."""
        return endpoint_urls(self.judge_base_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    # Fields that change what a run produces: a run folder refuses a different value.
    OUTPUT_FIELDS: ClassVar[tuple[str, ...]] = (
        "model",
        "feedback_mode",
        "per_reference",
        "judge_bar",
        "max_revisions",
        "profile",
        "prompt_variants",
        "temperature",
        "synthesis_temperature",
        "feedback_temperature",
        "top_p",
        "min_p",
        "top_k",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "respond_max_tokens",
        "refine_max_tokens",
        "line_max_chars",
        "synthesis_mode",
        "synthesis_oversample",
        "synthesis_max_tokens",
        "analysis_max_tokens",
        "distill_max_tokens",
        "feedback_max_tokens",
        "judge_temperature",
        "judge_top_p",
        "judge_min_p",
        "judge_top_k",
        "judge_repetition_penalty",
        "judge_frequency_penalty",
        "judge_presence_penalty",
        "checks",
        "relevance_min",
        "loop_rule",
        "judge_model",
        "judge_backend",
        "judge_encoder",
        "judge_criteria",
        "judge_logprobs",
        "judge_rationale_chars",
        "judge_per_criterion",
        "pairwise_filter",
        "max_tokens",
        "seed",
        "near_dup",
        "near_dup_threshold",
        "minhash_jaccard",
        "minhash_perm",
        "decontaminate",
        "decontam_ngram",
        "decontam_rouge",
    )

    def apply_profile(self, values: dict[str, Any], name: str) -> RefedSettings:
        """These settings with a profile's ``values`` under them: a field the user set (flag,
        environment, config file) keeps its value; the others take the profile's."""
        given = {k: getattr(self, k) for k in self.model_fields_set}
        merged = {**values, **given, "profile": name}
        return type(self).model_validate(merged)

    def fingerprint(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.OUTPUT_FIELDS}

    def public_dump(self) -> dict[str, Any]:
        """Everything but secrets, JSON-ready."""
        data = self.model_dump(mode="json", exclude={"api_key", "service_token"})
        data["api_key_set"] = self.api_key.get_secret_value() not in ("", "EMPTY")
        data["service_token_set"] = self.service_token is not None
        data["store"] = redact_dsn(self.store)
        return data


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the file named by REFED_CONFIG (set by ``--config``); keys are field names."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("REFED_CONFIG")
        if not path:
            return {}
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise SystemExit(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SystemExit(f"config file {path}: {exc}") from exc
        table = data.get("refed", data)
        unknown = sorted(set(table) - set(RefedSettings.model_fields))
        if unknown:
            raise SystemExit(f"config file {path}: unknown keys {', '.join(unknown)}")
        return {k.replace("-", "_"): v for k, v in table.items()}


def _flag_type(annotation: Any) -> tuple[Any, list[Any] | None]:
    """Map a field annotation to an argparse type and choices."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _flag_type(args[0])
    if origin is Literal:
        return str, list(get_args(annotation))
    if annotation in (int, float, Path):
        return annotation, None
    return str, None


ENDPOINT_FLAGS = (
    "base_url",
    "base_urls_file",
    "model",
    "api_key",
    "concurrency",
    "fixed_concurrency",
    "timeout",
    "max_retries",
)
"""The settings that say which LLM to call and how (every command that calls one takes them)."""


def add_settings_flags(
    parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None
) -> None:
    """One ``--kebab-case`` flag per settings field; defaults stay with the settings."""
    for name, field in RefedSettings.model_fields.items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
            continue
        kind, choices = _flag_type(field.annotation)
        if name == "base_url":  # repeatable: one flag per endpoint
            parser.add_argument(flag, action="append", default=None, help=field.description)
            continue
        parser.add_argument(
            flag, type=kind, choices=choices, default=None, help=field.description, dest=name
        )
    parser.add_argument("--config", type=Path, default=None, help="TOML config file.")


def settings_from_args(args: argparse.Namespace) -> RefedSettings:
    """Build settings from parsed flags (only flags actually given override env/file)."""
    values = {k: v for k, v in vars(args).items() if k in RefedSettings.model_fields}
    given = {k: v for k, v in values.items() if v is not None}
    if isinstance(given.get("base_url"), list):
        given["base_url"] = ",".join(given["base_url"])
    config = getattr(args, "config", None)
    if config is not None:
        os.environ["REFED_CONFIG"] = str(config)
    try:
        return RefedSettings(**given)
    except ValidationError as exc:
        raise SettingsError(settings_error_text(exc, config)) from None


class SettingsError(SystemExit):
    """Invalid settings: the process exits (code 1) printing which settings and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def settings_error_text(exc: ValidationError, config: Any = None) -> str:
    """One line per invalid setting: its flag, env variable, the value and what is wrong."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = loc[0] if loc else ""
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if name and name in RefedSettings.model_fields:
            flag = "--" + name.replace("_", "-")
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {name} ({flag} / REFED_{name.upper()}){shown}: {msg}")
        else:
            lines.append(f"  {msg}")
    source = f" (flags, environment or {config})" if config is not None else ""
    return "error: invalid settings" + source + ":\n" + "\n".join(lines)
