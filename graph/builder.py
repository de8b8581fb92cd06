"""Assemble Refed's LangGraph: one thread per reference, a subgraph per new instruction.

    START → reference_analysis → feedback_distillation → synthesis ─Send─► candidate
    candidate:  respond → self_critique → metric_judge ─(under the bar, rounds left)─┐
                              ▲                        └────────► END (closed)       │
                              └──────────────────────────────────────────────────────┘

In ``sample`` and ``none`` modes the thread starts at synthesis; in ``none`` mode
respond goes straight to the judge. Any node that fails sets ``error`` and the
thread (or candidate) goes to its end, so one failure never cancels siblings. The
candidate step that ends a candidate also closes it (``nodes.finalize``: accepted,
rejected with the reason, or failed) in the same step.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from nodes.feedback_distillation import feedback_distillation
from nodes.finalize import finalize
from nodes.metric_judge import metric_judge, wants_revision
from nodes.reference_analysis import reference_analysis
from nodes.respond import respond
from nodes.self_critique import self_critique
from nodes.synthesis import synthesis
from state.context import RefedContext
from state.graph_state import CandidateInput, CandidateOutput, CandidateState, ReferenceState
from state.records import Usage


# Routes are coroutines: LangGraph runs a plain function route in a thread pool, one
# hop per step (BENCHMARKS.md, "Async routes").
async def _start(state: ReferenceState, runtime: Runtime[RefedContext]) -> str:
    """Feedback is collected in reference mode, unless the input already carries it (cache)."""
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
    return [
        Send(
            "candidate",
            CandidateInput(reference=state.reference, feedback=state.feedback, instruction=inst),
        )
        for inst in state.instructions
    ]


async def _after_respond(state: CandidateState, runtime: Runtime[RefedContext]) -> str:
    if state.error:
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
    """The state the next step would see (usage adds up, as its reducer does)."""
    fields = {k: v for k, v in update.items() if k != "candidates"}
    if "usage" in fields:
        fields["usage"] = state.usage + Usage.model_validate(fields["usage"])
    return state.model_copy(update=fields)


def _closing(node: Node, route: Route) -> Node:
    """Run ``node``; when the candidate ends after it, :func:`finalize` it in the same step.

    Closing in place of a separate step saves one superstep and one checkpoint per
    candidate (about an eighth of the graph's steps); the record is the same.
    """

    @functools.wraps(node)
    async def step(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
        update = await node(state, runtime)
        after = _after_update(state, update)
        if await route(after, runtime) == END:
            update = {**update, **await finalize(after)}
        return update

    return step


def build_candidate_graph() -> StateGraph[
    CandidateState, RefedContext, CandidateInput, CandidateOutput
]:
    g = StateGraph(
        CandidateState,
        context_schema=RefedContext,
        input_schema=CandidateInput,
        output_schema=CandidateOutput,
    )
    g.add_node("respond", _closing(respond, _after_respond))
    g.add_node("self_critique", _closing(self_critique, _after_critique))
    g.add_node("metric_judge", _closing(metric_judge, _after_judge))
    g.add_edge(START, "respond")
    g.add_conditional_edges("respond", _after_respond, ["self_critique", "metric_judge", END])
    g.add_conditional_edges("self_critique", _after_critique, ["metric_judge", END])
    g.add_conditional_edges("metric_judge", _after_judge, ["self_critique", END])
    return g


def build_graph() -> StateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]:
    """The reference-thread graph, uncompiled (compile with or without a checkpointer)."""
    g = StateGraph(ReferenceState, context_schema=RefedContext)
    g.add_node("reference_analysis", reference_analysis)
    g.add_node("feedback_distillation", feedback_distillation)
    g.add_node("synthesis", synthesis)
    g.add_node("candidate", build_candidate_graph().compile())
    g.add_conditional_edges(START, _start, ["reference_analysis", "synthesis"])
    g.add_conditional_edges(
        "reference_analysis", _ok_or_end("feedback_distillation"), ["feedback_distillation", END]
    )
    g.add_conditional_edges("feedback_distillation", _ok_or_end("synthesis"), ["synthesis", END])
    g.add_conditional_edges("synthesis", _fan_out, ["candidate", END])
    g.add_edge("candidate", END)
    return g


def compile_graph(
    checkpointer: Any = None,
) -> CompiledStateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]:
    return build_graph().compile(checkpointer=checkpointer, name="refed")
