"""`langgraph dev` (Studio's local server) serves the graph offline; langgraph-sdk drives it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langgraph_sdk import get_client

from .conftest import REPO, FakeServerProc, free_port, wait_http

OFFLINE = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "1",
    "LANGSMITH_TRACING": "false",
}


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[str]:
    cli = Path(sys.executable).with_name("langgraph")
    if not cli.exists():
        found = shutil.which("langgraph")
        if found is None:
            pytest.fail("langgraph CLI missing: pip install -e '.[studio]'")
        cli = Path(found)
    port = free_port()
    log = tmp_path / "langgraph-dev.log"
    proc = subprocess.Popen(
        [str(cli), "dev", "--no-browser", "--no-reload", "--port", str(port)],
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **OFFLINE},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ok", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


async def test_graph_runs_in_langgraph_dev(dev_server: str, fake_server: FakeServerProc) -> None:
    client = get_client(url=dev_server)
    assistants = await client.assistants.search(graph_id="refed")
    assert assistants, "the refed graph is not registered"
    schemas = await client.assistants.get_schemas(assistants[0]["assistant_id"])
    context_fields = set(schemas["context_schema"]["properties"])
    assert {"model", "base_url", "feedback_mode", "judge_bar", "per_reference"} <= context_fields

    thread = await client.threads.create()
    run = await client.runs.wait(
        thread["thread_id"],
        "refed",
        input={
            "reference": {
                "id": "apples",
                "instruction": "How do I keep cut apples fresh?",
                "response": "Dip them in lemon water and chill them.",
            }
        },
        context={"base_url": fake_server.base_url, "model": "fake", "per_reference": 2},
    )
    assert isinstance(run, dict) and len(run["candidates"]) == 2
    assert {c["sample_id"] for c in run["candidates"]} == {"apples-0000", "apples-0001"}

    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == []
    assert state["values"]["feedback"]["reference_id"] == "apples"
    history = await client.threads.get_history(thread["thread_id"], limit=50)
    steps = [h["metadata"].get("step") for h in history]
    assert steps == sorted(steps, reverse=True)
    # Oldest first: each checkpoint names the node(s) that run next, so the history walks
    # the graph: analysis, distillation, synthesis, then the two candidates side by side.
    walked = [h["next"] for h in reversed(history)]
    assert walked == [
        ["__start__"],
        ["reference_analysis"],
        ["feedback_distillation"],
        ["synthesis"],
        ["respond", "respond"],
        ["self_critique", "self_critique"],
        ["metric_judge", "metric_judge"],
        [],
    ]
    assert fake_server.stats()["requests"] > 0
