"""Deadlines of sync calls and the errors of calls that could not be answered in time.

A sync call's ``timeout`` is first the server's statement_timeout; a server that answers nothing
at all is cut by one watchdog thread that shuts the connection's socket down under the waiting
call (async calls use the event loop's own timer, in pgshield.client).
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any

import psycopg

from pgshield.errors import Unavailable

# ------------------------------------------------------------- deadlines --
# ``timeout`` is first the server's statement_timeout, which answers a slow but live server
# with 57014. A server that answers nothing at all (a stopped backend, a frozen host) gets
# DEADLINE_GRACE more seconds, then the connection's socket is shut down under the waiting
# call, which then raises Unavailable. The connection is broken afterwards: pgshield drops and
# reopens its own, a pool discards it, a caller's connection has to be reopened by the caller.
DEADLINE_GRACE = 0.5


def sever(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    """Shut down the connection's socket, so that a call blocked on it returns at once."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.Error):
        return  # already closed
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class Watchdog:
    """One daemon thread that severs the connections of sync calls past their deadline."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, conn: psycopg.Connection) -> list[Any]:
        # [deadline, seq, conn, disarmed, fired]
        entry = [time.monotonic() + seconds, next(self._seq), conn, False, False]
        with self._cv:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pgshield-deadline", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is entry:
                self._cv.notify()
        return entry

    def disarm(self, entry: list[Any]) -> bool:
        """Stop watching; True when the deadline had already fired."""
        with self._cv:
            entry[3] = True
            entry[2] = None
            return bool(entry[4])

    def fired(self, entry: list[Any]) -> bool:
        """True when the deadline has fired (the entry keeps watching otherwise)."""
        with self._cv:
            return bool(entry[4])

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._heap and self._heap[0][3]:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                entry = heapq.heappop(self._heap)
                entry[4] = True
                conn = entry[2]
            sever(conn)


WATCHDOG = Watchdog()


def no_answer(timeout: float) -> Unavailable:
    return Unavailable(
        f"no answer from the database within {timeout + DEADLINE_GRACE:g} s",
        hint="the server is unreachable or stopped; the connection was closed",
    )


def no_pooled_connection(exc: Exception) -> Unavailable:
    return Unavailable(
        f"no connection from the pool: {exc}",
        hint="the pool is exhausted or cannot reach the server",
    )


def check_deadline(deadline: float | None) -> None:
    """Raise Unavailable when the caller stopped waiting before the call could be sent."""
    if deadline is not None and time.monotonic() >= deadline:
        raise Unavailable(
            "the call was not sent: its caller had stopped waiting for it",
            hint="the connection stayed busy with earlier calls; pass a pool for calls at once",
        )


def busy_for(timeout: float) -> Unavailable:
    """A call that could not have the client's one connection within its timeout."""
    return Unavailable(
        f"the connection stayed busy with other calls for {timeout:g} s",
        hint="calls on one connection take turns: pass a pool for calls at once",
    )
