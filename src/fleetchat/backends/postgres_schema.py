"""The PostgreSQL schema, as an ordered list of versioned migrations.

``PostgresDatabase.start()`` applies every migration the database has not recorded in
``schema_migrations``, oldest first, each in its own transaction under an advisory lock (see
postgres.py). A migration, once released, never changes: fix or extend the schema with a new
one at the end of the list, with the next version number.

Records are stored as msgspec-encoded JSON in a ``jsonb`` column ``data``, with the ids (and
whatever a query filters on) as columns of their own, so they stay queryable with SQL:
``SELECT id, data->'capabilities' FROM agents WHERE (data->>'draining')::boolean``.
"""

from __future__ import annotations

__all__ = ["BOOTSTRAP", "LATEST_VERSION", "LOCK_KEY", "MIGRATIONS"]

LOCK_KEY = 0x666C6565_74636874
"""The ``pg_advisory_xact_lock`` key that serialises migrations between hub nodes ("fleetcht")."""

BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
"""Run under the lock before anything else: the table of applied migrations."""

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "agents and tokens",
        """
CREATE TABLE agents (
    id text PRIMARY KEY,
    data jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tokens (
    sha256 text PRIMARY KEY,
    agent_id text NOT NULL,
    data jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tokens_by_agent ON tokens (agent_id);
""",
    ),
    (
        2,
        "lease resources",
        """
CREATE TABLE lease_resources (
    name text PRIMARY KEY,
    version bigint NOT NULL,
    data jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
""",
    ),
    (
        3,
        "tasks",
        """
CREATE TABLE tasks (
    id text PRIMARY KEY,
    version bigint NOT NULL,
    state text NOT NULL,
    holder text,
    idem text UNIQUE,
    created_at double precision NOT NULL,
    data jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_by_state ON tasks (state, created_at);
""",
    ),
    (
        4,
        "workflows",
        """
CREATE TABLE workflow_definitions (
    name text NOT NULL,
    version text NOT NULL,
    data jsonb NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE executions (
    id text PRIMARY KEY,
    version bigint NOT NULL,
    status text NOT NULL,
    name text NOT NULL,
    created_at double precision NOT NULL,
    data jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX executions_by_status ON executions (status, created_at);
CREATE TABLE execution_events (
    execution text NOT NULL,
    seq bigint NOT NULL,
    data jsonb NOT NULL,
    PRIMARY KEY (execution, seq)
);
""",
    ),
    (
        5,
        "health probe",
        """
CREATE TABLE health_probe (node text PRIMARY KEY, at double precision NOT NULL);
""",
    ),
]
"""(version, name, SQL), in version order."""

LATEST_VERSION = MIGRATIONS[-1][0]
"""The newest schema version this fleetchat knows."""
