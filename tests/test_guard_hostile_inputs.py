"""The Data API guard against what a hostile client sends: encoded paths, HEAD, padded headers.

Each request is driven the way PostgREST calls its pre-request hook (see test_guard.py).
PostgREST sets ``request.path`` as the client sent it but routes by the decoded path, so
``/%74odos`` is table ``todos``; the guard matches rules against the decoded path too.
"""

from __future__ import annotations

import psycopg
import pytest

from test_guard import POLICY, owner, request  # noqa: F401  (owner is a fixture)

TODOS = "/pgshield_t_todos"


def used(conn: psycopg.Connection) -> dict[str, list[int]]:
    """Each subject's counts under the test policy."""
    return dict(
        conn.execute(  # type: ignore[arg-type]
            "select key, array_agg(count order by window_seconds)"
            "  from pgshield.rate_limit_policy_state_windows where policy = %s group by key",
            (POLICY,),
        ).fetchall()
    )


@pytest.mark.parametrize(
    ("sent", "routed"),
    [
        ("/%70gshield_t_todos", TODOS),
        ("/pgshield_t_%74%6F%64%6f%73", TODOS),
        ("/%72pc/send%5fmessage", "/rpc/send_message"),
        ("/%%74odos%", "/%todos%"),  # a lone % stays
        ("/a%00b%c3%a9", "/a%00b%c3%a9"),  # NUL and non-ASCII escapes stay
        ("/x%2Fy", "/x/y"),
        ("%", "/%"),
        ("pgshield_t_todos", TODOS),  # sent without its leading '/'
        ("%70gshield_t_todos", TODOS),
        ("", "/"),
        (None, "/"),
    ],
)
def test_a_path_is_decoded_as_postgrest_routes_it(
    conn: psycopg.Connection, sent: str | None, routed: str
) -> None:
    row = conn.execute("select pgshield.guard_decoded_path(%s)", (sent,)).fetchone()
    assert row == (routed,)


def test_decoding_reads_a_bounded_head_of_a_long_path(conn: psycopg.Connection) -> None:
    long = "/rpc/" + "%61" * 100_000
    row = conn.execute(
        "select left(d, 10), length(d) from pgshield.guard_decoded_path(%s) d", (long,)
    ).fetchone()
    # The first 1,000 characters decoded (the prefix, 331 escapes and a cut "%6"), the rest
    # as sent.
    assert row == ("/rpc/aaaaa", 5 + 331 + 2 + (len(long) - 1000))


def test_an_encoded_path_counts_against_the_rule_it_names(owner: psycopg.Connection) -> None:  # noqa: F811
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    sent = ["/%70gshield_t_todos", "/pgshield_t_%74odos", "/pgshield%5Ft_todos", TODOS]
    assert [request(owner, path=p).status for p in sent] == [200, 200, 200, 429]
    owner.execute("select pgshield.define_guard_rule(%s, 'anon', '*', '/rpc/*')", (POLICY,))
    anon = {"x-forwarded-for": "203.0.113.9"}
    paths = ["/rpc/f", "/%72pc/f", "/rp%63/f", "/rpc/f"]
    statuses = [request(owner, path=p, role="anon", sub=None, headers=anon).status for p in paths]
    assert statuses == [200, 200, 200, 429]
    assert used(owner)["anon:203.0.113.9"] == [3, 3]


def test_a_target_without_its_leading_slash_counts_against_the_rule_it_names(
    owner: psycopg.Connection,  # noqa: F811
) -> None:
    # PostgREST's server takes "POST pgshield_t_todos HTTP/1.1" and routes it as the table.
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    sent = ["pgshield_t_todos", "%70gshield_t_todos", "pgshield_t_%74odos", TODOS]
    assert [request(owner, path=p).status for p in sent] == [200, 200, 200, 429]
    owner.execute("select pgshield.define_guard_rule(%s, 'anon', '*', '/rpc/*')", (POLICY,))
    anon = {"x-forwarded-for": "203.0.113.9"}
    paths = ["rpc/f", "%72pc/f", "rpc/f", "/rpc/f"]
    statuses = [request(owner, path=p, role="anon", sub=None, headers=anon).status for p in paths]
    assert statuses == [200, 200, 200, 429]
    assert used(owner)["anon:203.0.113.9"] == [3, 3]


def test_a_get_rule_covers_head(owner: psycopg.Connection) -> None:  # noqa: F811
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    owner.execute(
        "select pgshield.define_guard_rule(%s, 'authenticated', 'GET', %s)", (POLICY, TODOS)
    )
    assert request(owner, "HEAD").status == 200
    for _ in range(3):
        assert request(owner, "POST").status == 200
    assert (request(owner, "GET").status, request(owner, "HEAD").status) == (429, 429)
    assert list(used(owner).values()) == [[3, 3]], "a read was counted"


def test_padding_the_forwarded_header_buys_no_second_bucket(owner: psycopg.Connection) -> None:  # noqa: F811
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    owner.execute("select pgshield.set_client_address_source('x-forwarded-for', 1)")
    owner.execute("select pgshield.define_guard_rule(%s, 'anon', 'POST', '/rpc/*')", (POLICY,))
    padded = ", ".join(f"10.{i // 256 % 256}.{i % 256}.1" for i in range(1000))
    assert len(padded) > 8192
    for xff in ("203.0.113.7", f"{padded}, 203.0.113.7", f"{padded}, 203.0.113.7"):
        assert (
            request(
                owner, path="/rpc/f", role="anon", sub=None, headers={"x-forwarded-for": xff}
            ).status
            == 200
        )
    assert (
        request(
            owner,
            path="/rpc/f",
            role="anon",
            sub=None,
            headers={"x-forwarded-for": f"{padded}, 203.0.113.7"},
        ).status
        == 429
    )
    assert used(owner) == {"anon:203.0.113.7": [3, 3]}


def test_an_ipv4_mapped_address_is_the_ipv4_client(owner: psycopg.Connection) -> None:  # noqa: F811
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    owner.execute("select pgshield.set_client_address_source('x-forwarded-for', 1)")
    owner.execute("select pgshield.define_guard_rule(%s, 'anon', 'POST', '/rpc/*')", (POLICY,))
    for xff in ("::ffff:198.51.100.1", "198.51.100.1", "::ffff:c633:6402", "2001:db8::1"):
        assert (
            request(
                owner, path="/rpc/f", role="anon", sub=None, headers={"x-forwarded-for": xff}
            ).status
            == 200
        )
    assert used(owner) == {
        "anon:198.51.100.1": [2, 2],
        "anon:198.51.100.2": [1, 1],
        "anon:2001:db8::/64": [1, 1],
    }


def test_the_guard_cannot_be_chained_to_itself(owner: psycopg.Connection) -> None:  # noqa: F811
    for name in ("pgshield.request_guard", "pgshield.request_guard_decide"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="pgshield's own"):
            owner.execute("select pgshield.guard_set_chained(%s)", (name,))
    row = owner.execute("select chained_function from pgshield.guard_options").fetchone()
    assert row == (None,)
