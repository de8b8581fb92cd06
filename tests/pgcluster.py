"""The tests' throwaway PostgreSQL (``testing.pgcluster``): one cluster per session, a fresh
database per test. Without Postgres the tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import ModuleType

import pytest

from testing.pgcluster import PgCluster, find_bin


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def require_postgres_extra() -> ModuleType:
    """``psycopg``: skips the module without the postgres extra, except on CI (fails)."""
    if on_ci():
        import psycopg

        return psycopg
    return pytest.importorskip("psycopg", reason="pip install -e '.[postgres]'")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One cluster per test session; missing Postgres skips locally and fails on CI."""
    bin_dir = find_bin()
    reason = ""
    if bin_dir is None:
        reason = "PostgreSQL not found (initdb/pg_ctl on PATH, REFED_PG_BIN, /usr/lib/postgresql)"
    else:
        try:
            import langgraph.checkpoint.postgres  # noqa: F401
            import psycopg  # noqa: F401
        except ImportError as exc:
            reason = f"the postgres extra is not installed ({exc}): pip install -e '.[postgres]'"
    if reason:
        if on_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    assert bin_dir is not None
    started = time.monotonic()
    cluster = PgCluster(bin_dir)
    print(f"postgres cluster up in {time.monotonic() - started:.1f}s on port {cluster.port}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """A fresh database of the session's cluster, for one test."""
    return pg_cluster.create_database()
