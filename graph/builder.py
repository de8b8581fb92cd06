"""Assemble Refed's LangGraph: one thread per reference, candidates carried by ``Send``.

    START → [reference_judge] → reference_analysis → feedback_distillation → synthesis
    synthesis ─Send×K─► respond
    respond ─Send─► self_critique ─Send─► metric_judge ─(under the bar, rounds left)─┐
                          ▲                   └──────► closed: record to the thread  │
                          └──────────────────────────────────────────────────────────┘

A candidate is a :class:`CandidateState` travelling in a ``Send`` from node to node
of the reference's own graph: each candidate step runs its node, then sends the
updated candidate on, or closes it (``nodes.finalize``: accepted, rejected with the
reason, or failed) and adds the record to the thread's ``candidates``. Each step's
result is checkpointed when its task ends, so a resume redoes no finished step.
This costs a third of the engine's work of a subgraph per candidate (its own loop,
channels and checkpoints); the price is that the candidates of one reference move in
step (a step ends when its slowest candidate does), which other references' requests
fill in.

With a bar anchored on the reference (``judge_bar = "reference[:MARGIN]"``) the thread
starts by scoring the reference pair itself. A candidate whose answer fails a validity
check closes as rejected without a judge call. In ``sample`` and ``none`` modes there is
no reference analysis; in ``none`` mode
respond goes straight to the judge. Any node that fails sets ``error`` and the
thread (or candidate) goes to its end, so one failure never cancels siblings.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from nodes.feedback_distillation import feedback_distillation
from nodes.finalize import finalize
from nodes.metric_judge import metric_judge, wants_revision
from nodes.reference_analysis import reference_analysis
from nodes.reference_judge import reference_judge
from nodes.respond import respond
from nodes.self_critique import self_critique
from nodes.synthesis import synthesis
from state.context import RefedContext
from state.graph_state import CandidateState, ReferenceState
from state.judgements import JudgeBar
from state.records import Usage


# Routes are coroutines: LangGraph runs a plain function route in a thread pool, one
# hop per step.
async def _start(state: ReferenceState, runtime: Runtime[RefedContext]) -> str:
    """With a bar anchored on the reference, its own score comes first: from cached feedback
    (no call), beside the analysis calls (reference mode), or by itself (other modes)."""
    ctx = runtime.context
    anchored = JudgeBar.parse(ctx.judge_bar).anchored
    analysing = ctx.feedback_mode == "reference" and state.feedback is None
    if anchored and state.reference_judgement is None and not analysing:
        return "reference_judge"
    return await _collect_feedback(state, runtime)


async def _collect_feedback(state: ReferenceState, runtime: Runtime[RefedContext]) -> str:
    """Feedback is collected in reference mode, unless the input already carries it (cache)."""
    if state.error:
        return END
    if runtime.context.feedback_mode == "reference" and state.feedback is None:
        return "reference_analysis"
    return "synthesis"


def _ok_or_end(next_node: str) -> Any:
    async def route(state: ReferenceState) -> str:
        return END if state.error else next_node

    route.__name__ = f"to_{next_node}"
    return route


async def _fan_out(state: ReferenceState) -> list[Send] | str:
    if state.error or not state.instructions:
        return END
    anchor = state.reference_judgement
    return [
        Send(
            "respond",
            CandidateState(
                reference=state.reference,
                feedback=state.feedback,
                instruction=inst,
                reference_score=anchor.mean if anchor is not None else None,
            ),
        )
        for inst in state.instructions
    ]


async def _after_respond(state: CandidateState, runtime: Runtime[RefedContext]) -> str:
    if state.error or state.rejection is not None:
        return END
    return "metric_judge" if runtime.context.feedback_mode == "none" else "self_critique"


async def _after_critique(state: CandidateState, runtime: Runtime[RefedContext]) -> str:
    return END if state.error else "metric_judge"


async def _after_judge(state: CandidateState, runtime: Runtime[RefedContext]) -> str:
    if state.error:
        return END
    return "self_critique" if wants_revision(state, runtime.context) else END


Route = Callable[[CandidateState, Runtime[RefedContext]], Awaitable[str]]


class Node(Protocol):
    def __call__(
        self, state: CandidateState, runtime: Runtime[RefedContext]
    ) -> Awaitable[dict[str, Any]]: ...


def _after_update(state: CandidateState, update: dict[str, Any]) -> CandidateState:
    """The candidate with a node's update applied (its usage added to the candidate's)."""
    fields = dict(update)
    if "usage" in fields:
        fields["usage"] = state.usage + Usage.model_validate(fields["usage"])
    return state.model_copy(update=fields)


def _candidate_step(node: Node, route: Route) -> Callable[..., Awaitable[Command[str]]]:
    """Run ``node`` on one candidate, then send the candidate on to the next node, or
    close it (:func:`finalize`) and hand the record to the reference thread."""

    @functools.wraps(node)
    async def step(state: CandidateState, runtime: Runtime[RefedContext]) -> Command[str]:
        update = await node(state, runtime)
        after = _after_update(state, update)
        target = await route(after, runtime)
        if target == END:
            return Command(update=await finalize(after))
        return Command(goto=Send(target, after))

    return step


def build_graph() -> StateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]:
    """The reference-thread graph, uncompiled (compile with or without a checkpointer)."""
    g = StateGraph(ReferenceState, context_schema=RefedContext)
    g.add_node("reference_judge", reference_judge)
    g.add_node("reference_analysis", reference_analysis)
    g.add_node("feedback_distillation", feedback_distillation)
    g.add_node("synthesis", synthesis)
    # A candidate node gets its CandidateState from the Send as is; naming the thread's
    # schema as its input keeps the candidate's fields out of the thread's channels.
    for name, node, route, ends in (
        ("respond", respond, _after_respond, ("self_critique", "metric_judge", END)),
        ("self_critique", self_critique, _after_critique, ("metric_judge", END)),
        ("metric_judge", metric_judge, _after_judge, ("self_critique", END)),
    ):
        g.add_node(
            name,
            _candidate_step(node, route),
            input_schema=ReferenceState,
            destinations=ends,
        )
    g.add_conditional_edges(START, _start, ["reference_judge", "reference_analysis", "synthesis"])
    g.add_conditional_edges(
        "reference_judge", _collect_feedback, ["reference_analysis", "synthesis", END]
    )
    g.add_conditional_edges(
        "reference_analysis", _ok_or_end("feedback_distillation"), ["feedback_distillation", END]
    )
    g.add_conditional_edges("feedback_distillation", _ok_or_end("synthesis"), ["synthesis", END])
    g.add_conditional_edges("synthesis", _fan_out, ["respond", END])
    return g


def compile_graph(
    checkpointer: Any = None,
) -> CompiledStateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]:
    return build_graph().compile(checkpointer=checkpointer, name="refed")
