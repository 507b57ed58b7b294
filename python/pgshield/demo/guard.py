"""Demo section: the Data API guard answering a burst of POSTs the way PostgREST would."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable

import psycopg

from pgshield.client import connect
from pgshield.text import heading, table

NOW = dt.datetime(2030, 1, 1, 0, 0, 5, tzinfo=dt.timezone.utc)
USER = uuid.UUID("00000000-0000-4000-8000-00000000d3e0")


def _request(conn: psycopg.Connection, method: str, path: str) -> dict[str, str]:
    """One request as PostgREST runs it: role, claims, method and path, then the hook."""
    try:
        with conn.transaction():
            conn.execute("select set_config('role', 'authenticated', true)")
            conn.execute("select set_config('response.headers', '', true)")
            conn.execute(
                "select set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', %s, true), set_config('request.path', %s, true)",
                (json.dumps({"role": "authenticated", "sub": str(USER)}), method, path),
            )
            conn.execute("select pgshield.request_guard()")
            headers = conn.execute("select current_setting('response.headers', true)").fetchone()
            conn.execute("reset role")
        sent = {k: v for h in json.loads((headers or [None])[0] or "[]") for k, v in h.items()}
        return {"status": "200", "RateLimit": sent.get("RateLimit", "-"), "Retry-After": "-"}
    except psycopg.Error as exc:
        conn.execute("reset role")
        detail = json.loads(exc.diag.message_detail or "{}")
        sent = detail.get("headers", {})
        return {
            "status": str(detail.get("status", exc.sqlstate)),
            "RateLimit": sent.get("RateLimit", "-"),
            "Retry-After": sent.get("Retry-After", "-"),
        }


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("the Data API guard (PostgREST pre-request)"))
    echo("A rule: authenticated POST /todos, 3 per minute per user. Five POSTs from one user,")
    echo("each run the way PostgREST runs a request, with pgshield.request_guard() first:\n")
    # One transaction rolled back at the end: nothing is left behind.
    with connect(dsn) as conn, conn.transaction(force_rollback=True):
        conn.execute("select pgshield.set_clock(%s)", (NOW,))
        conn.execute(
            "select public.define_rate_limit_policy('demo_writes', '{\"free\": {\"60\": 3}}',"
            " p_algorithm => 'fixed_window')"
        )
        conn.execute(
            "select pgshield.define_guard_rule('demo_writes', 'authenticated', 'POST', '/todos')"
        )
        rows = [
            {"request": f"POST /todos #{i}", **_request(conn, "POST", "/todos")}
            for i in (1, 2, 3, 4, 5)
        ]
        rows.append({"request": "GET /todos", **_request(conn, "GET", "/todos")})
        echo(table(rows, ["request", "status", "RateLimit", "Retry-After"]))
        echo("")
        echo("The 429s carry Retry-After and the RateLimit headers; the GET matches no rule.")
        echo("")
