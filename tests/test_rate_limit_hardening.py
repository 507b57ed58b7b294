"""A hostile signed-up (or anonymous) user against rate limiting, called the way PostgREST calls.

Each test reproduces one finding of the hardening review and fails on 0.1.0: anon identity from
a header the client writes, usage reads that scan every subject, policy enumeration, and the
rollback that refunded a brute-force attempt. Refused calls write nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgshield import Shield
from support import act_as

POLICY = "pgshield_t_anon"
ALICE = uuid.UUID("5a0e0a52-0000-4000-8000-0000000a11ce")


@pytest.fixture
def owner(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    conn.execute(
        "select public.define_rate_limit_policy(%s, %s::jsonb, p_algorithm => 'fixed_window',"
        " p_default_tier => 'free', p_allow_anonymous => true,"
        " p_endpoint_costs => '{\"/login\": 1}'::jsonb)",
        (POLICY, json.dumps({"free": {"60": 5}, "pro": {"60": 50}})),
    )
    conn.execute("insert into auth.users (id) values (%s) on conflict do nothing", (ALICE,))
    yield conn


def anon_check(conn: psycopg.Connection, headers: dict[str, str], policy: str = POLICY) -> tuple:
    with act_as(conn, "anon", headers=headers):
        row = conn.execute(
            "select allowed, subject, tier from public.check_rate_limit(%s)", (policy,)
        ).fetchone()
    assert row is not None
    return row


def state_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select s.subject, u.c from pgshield.rate_limit_policy_state s, unnest(s.counts) u(c)"
        " where s.policy = %s order by 1",
        (POLICY,),
    ).fetchall()


# --------------------------------------------------------- anon identity ----
def test_prepended_forwarded_for_entries_buy_no_quota(owner: psycopg.Connection) -> None:
    # The proxy appends the real address (198.51.100.7); the client writes everything before it.
    allowed = [
        anon_check(owner, {"x-forwarded-for": f"10.9.{i // 250}.{i % 250}, 198.51.100.7"})
        for i in range(50)
    ]
    assert sum(a for a, _, _ in allowed) == 5
    assert {s for _, s, _ in allowed} == {"anon:198.51.100.7"}


def test_naming_a_victims_address_spends_nothing_of_its_quota(owner: psycopg.Connection) -> None:
    for _ in range(20):
        anon_check(owner, {"x-forwarded-for": "203.0.113.9, 198.51.100.7"})
    victim = anon_check(owner, {"x-forwarded-for": "203.0.113.9"})
    assert victim == (True, "anon:203.0.113.9", "free")
    assert state_rows(owner) == [("anon:198.51.100.7", 5), ("anon:203.0.113.9", 1)]


def test_an_ipv6_line_shares_one_quota(owner: psycopg.Connection) -> None:
    results = [anon_check(owner, {"x-forwarded-for": f"2001:db8:1:2::{i:x}"}) for i in range(10)]
    assert sum(a for a, _, _ in results) == 5
    assert {s for _, s, _ in results} == {"anon:2001:db8:1:2::/64"}
    other_line = anon_check(owner, {"x-forwarded-for": "2001:db8:1:3::1"})
    assert other_line[:2] == (True, "anon:2001:db8:1:3::/64")
    owner.execute("select pgshield.set_client_address_source('x-forwarded-for', 1, 32, 128)")
    assert anon_check(owner, {"x-forwarded-for": "2001:db8:1:2::9"})[1] == "anon:2001:db8:1:2::9"


def test_an_anon_tier_applies_only_to_the_trusted_address(owner: psycopg.Connection) -> None:
    owner.execute("select public.set_rate_limit_tier('anon:198.51.100.50', 'pro')")
    spoofed = anon_check(owner, {"x-forwarded-for": "198.51.100.50, 198.51.100.7"})
    assert spoofed[1:] == ("anon:198.51.100.7", "free")
    real = anon_check(owner, {"x-forwarded-for": "198.51.100.50"})
    assert real[1:] == ("anon:198.51.100.50", "pro")


@pytest.mark.parametrize(
    ("source", "headers", "subject"),
    [
        (("x-forwarded-for", 1), {"x-forwarded-for": "1.2.3.4, 5.6.7.8"}, "anon:5.6.7.8"),
        (("x-forwarded-for", 2), {"x-forwarded-for": "1.2.3.4, 5.6.7.8, 9.9.9.9"}, "anon:5.6.7.8"),
        (("x-forwarded-for", 3), {"x-forwarded-for": "5.6.7.8, 9.9.9.9"}, "anon:unknown"),
        (
            ("cf-connecting-ip", 1),
            {"cf-connecting-ip": "5.6.7.8", "x-forwarded-for": "1.1.1.1"},
            "anon:5.6.7.8",
        ),
        (("cf-connecting-ip", 1), {"x-forwarded-for": "5.6.7.8"}, "anon:unknown"),
        ((None, 1), {"x-forwarded-for": "5.6.7.8"}, "anon:unknown"),
        (("x-forwarded-for", 1), {"x-forwarded-for": "1.2.3.4, 5.6.7.8:4711"}, "anon:5.6.7.8"),
        (("x-forwarded-for", 1), {"x-forwarded-for": "[2001:db8::1]:443"}, "anon:2001:db8::/64"),
        (("x-forwarded-for", 1), {"x-forwarded-for": "1.2.3.4, not-an-ip"}, "anon:unknown"),
        (("x-forwarded-for", 1), {"x-forwarded-for": "1.2.3.4, 999.1.1.1"}, "anon:unknown"),
        (("x-forwarded-for", 1), {}, "anon:unknown"),
    ],
)
def test_client_address_sources(
    owner: psycopg.Connection, source: tuple, headers: dict[str, str], subject: str
) -> None:
    owner.execute("select pgshield.set_client_address_source(%s, %s)", source)
    assert anon_check(owner, headers)[1] == subject


def test_setting_the_source_is_for_service_role_and_checked(owner: psycopg.Connection) -> None:
    before = owner.execute("select pgshield.client_address_source()").fetchone()
    for args, state in [
        (("x forwarded",), "22023"),
        (("x-forwarded-for", 0), "22023"),
        (("x-forwarded-for", 1, 7), "22023"),
        (("x-forwarded-for", 1, 32, 129), "22023"),
    ]:
        with pytest.raises(psycopg.Error) as caught, owner.transaction():
            placeholders = ", ".join(["%s"] * len(args))
            owner.execute(f"select pgshield.set_client_address_source({placeholders})", args)
        assert caught.value.sqlstate == state, args
    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.Error) as caught, act_as(owner, role, sub=ALICE):
            owner.execute("select pgshield.set_client_address_source('x-real-ip')")
        assert caught.value.sqlstate == "42501"
    with act_as(owner, "service_role"):
        got = owner.execute("select pgshield.set_client_address_source('X-Real-IP')").fetchone()
    assert got and got[0]["header"] == "x-real-ip"
    assert before and before[0]["header"] == "x-forwarded-for"


# ------------------------------------------------------------ enumeration ----
def test_anon_cannot_tell_a_closed_policy_from_a_missing_one(owner: psycopg.Connection) -> None:
    owner.execute(
        "select public.define_rate_limit_policy('pgshield_t_closed', '{\"free\": {\"60\": 5}}',"
        " p_endpoint_costs => '{\"/secret\": 2}'::jsonb)"
    )
    answers = set()
    for policy, endpoint in [
        ("pgshield_t_closed", None),
        ("pgshield_t_missing", None),
        ("pgshield_t_closed", "/secret"),
        ("pgshield_t_closed", "/nope"),
        ("pgshield_t_missing", "/nope"),
    ]:
        for fn in ("check_rate_limit", "peek_check_rate_limit"):
            with pytest.raises(psycopg.Error) as caught, act_as(owner, "anon", headers={}):
                owner.execute(f"select public.{fn}(%s, 1, %s)", (policy, endpoint))
            answers.add((caught.value.sqlstate, caught.value.diag.message_primary))
    assert answers == {("42501", "this policy is not available to anonymous callers")}
    assert state_rows(owner) == []


# ------------------------------------------------------------------ usage ----
def test_reading_usage_touches_only_the_subjects_rows(owner: psycopg.Connection) -> None:
    owner.execute(
        "insert into pgshield.rate_limit_policy_state"
        " (subject, policy, algorithm, windows, limits, starts, counts, prevs, tats, expires_at)"
        " select 'anon:10.0.' || (g / 250) || '.' || (g %% 250), %s, 'fixed_window', '{60}', '{5}',"
        "        '{1893456000000000}', '{1}', '{0}', '{NULL}', '2030-01-02 00:00:00+00'"
        " from generate_series(1, 20000) g",
        (POLICY,),
    )
    owner.execute("analyze pgshield.rate_limit_policy_state")
    Shield(owner).rate_limits.check(POLICY, subject=str(ALICE))
    with act_as(owner, "authenticated", sub=ALICE):
        read = owner.execute(
            "select pg_stat_get_xact_tuples_returned('pgshield.rate_limit_policy_state'::regclass)"
            "     + pg_stat_get_xact_tuples_fetched('pgshield.rate_limit_policy_state'::regclass)"
        ).fetchone()
        usage = owner.execute("select public.get_rate_limit_usage()").fetchone()
        after = owner.execute(
            "select pg_stat_get_xact_tuples_returned('pgshield.rate_limit_policy_state'::regclass)"
            "     + pg_stat_get_xact_tuples_fetched('pgshield.rate_limit_policy_state'::regclass)"
        ).fetchone()
    assert usage and [(u["policy"], u["used"]) for u in usage[0]] == [(POLICY, 1)]
    assert read and after and after[0] - read[0] <= 10, "the usage read scanned other subjects"


# --------------------------------------------------- rollback and attempts ----
GUARDED = """
create function public.pgshield_t_check_pin(p_pin text) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, public
as $$
declare
  v_rl public.rate_limit_check_result := public.check_rate_limit('pgshield_t_pin');
begin
  if not v_rl.allowed then
    perform set_config('response.status', '429', true);
    return jsonb_build_object('ok', false, 'error', 'too many attempts',
                              'retry_after_ms', v_rl.retry_after_ms);
  end if;
  if p_pin is distinct from '4321' then
    -- Answer the failure instead of raising it: PostgREST then commits, and the attempt counts.
    perform set_config('response.status', '403', true);
    return jsonb_build_object('ok', false, 'error', 'wrong pin');
  end if;
  return jsonb_build_object('ok', true);
end
$$;
create function public.pgshield_t_check_pin_raising(p_pin text) returns boolean
language plpgsql volatile security invoker
set search_path = pg_catalog, public
as $$
begin
  if not (public.check_rate_limit('pgshield_t_pin')).allowed then
    raise exception using errcode = 'PT429', message = 'too many attempts';
  end if;
  if p_pin is distinct from '4321' then
    raise exception using errcode = '42501', message = 'wrong pin';  -- rolls the attempt back
  end if;
  return true;
end
$$;
grant execute on function public.pgshield_t_check_pin(text) to authenticated;
grant execute on function public.pgshield_t_check_pin_raising(text) to authenticated;
"""


@pytest.fixture
def pin(owner: psycopg.Connection) -> psycopg.Connection:
    owner.execute(
        "select public.define_rate_limit_policy('pgshield_t_pin', '{\"free\": {\"900\": 5}}',"
        " p_algorithm => 'fixed_window')"
    )
    owner.execute(GUARDED)
    return owner


def postgrest_rpc(conn: psycopg.Connection, function: str, pin_value: str) -> tuple:
    """One request as PostgREST runs it: a transaction that commits unless the call raises."""
    try:
        with act_as(conn, "authenticated", sub=ALICE):
            row = conn.execute(f"select public.{function}(%s)", (pin_value,)).fetchone()
            status = conn.execute("select current_setting('response.status', true)").fetchone()
        return (row[0] if row else None, status[0] if status else None)
    except psycopg.Error as exc:
        return (exc.sqlstate, None)


def test_answered_failures_count_every_attempt(pin: psycopg.Connection) -> None:
    answers = [postgrest_rpc(pin, "pgshield_t_check_pin", f"{i:04d}") for i in range(8)]
    assert [a[1] for a in answers] == ["403"] * 5 + ["429"] * 3
    # The right PIN now fails too: the attacker cannot go on guessing.
    right = postgrest_rpc(pin, "pgshield_t_check_pin", "4321")
    assert right[0]["ok"] is False and right[1] == "429"
    used = pin.execute(
        "select u.c from pgshield.rate_limit_policy_state s, unnest(s.counts) u(c)"
        " where s.policy = 'pgshield_t_pin'"
    ).fetchall()
    assert used == [(5,)]


def test_a_raised_failure_rolls_the_attempt_back(pin: psycopg.Connection) -> None:
    # The pitfall the docs warn about: raising undoes the consumption with everything else.
    answers = [postgrest_rpc(pin, "pgshield_t_check_pin_raising", f"{i:04d}") for i in range(20)]
    assert {a[0] for a in answers} == {"42501"}
    assert postgrest_rpc(pin, "pgshield_t_check_pin_raising", "4321")[0] is True


def test_psycopg_counts_the_attempt_in_its_own_transaction(
    pin: psycopg.Connection, db: str
) -> None:
    # With psycopg: consume first (pgshield's own autocommit call), then run the guarded work
    # in a transaction of its own; a failure there cannot refund the attempt.
    shield = Shield(db)
    outcomes = []
    for _ in range(7):
        decision = shield.rate_limits.check("pgshield_t_pin", subject=f"pin:{ALICE}")
        if not decision.allowed:
            outcomes.append("denied")
            continue
        with psycopg.connect(db) as work, pytest.raises(psycopg.errors.RaiseException):
            work.execute("do $$ begin raise exception 'wrong pin'; end $$")
        outcomes.append("wrong")
    shield.close()
    assert outcomes == ["wrong"] * 5 + ["denied"] * 2


def test_an_unknown_policy_name_is_echoed_at_most_64_characters(
    owner: psycopg.Connection,
) -> None:
    huge = "p" * 1_000_000
    for call in (
        "select public.check_rate_limit(%s)",
        "select public.peek_check_rate_limit(%s)",
        "select public.get_rate_limit_usage(p_policy => %s)",
    ):
        with (
            pytest.raises(psycopg.errors.InvalidParameterValue) as refused,
            act_as(owner, "authenticated", sub=ALICE) as c,
        ):
            c.execute(call, (huge,))
        assert refused.value.diag.message_primary == f"p_policy: unknown policy '{'p' * 64}'"


def test_a_huge_endpoint_multiplier_is_a_denial_not_an_overflow(
    owner: psycopg.Connection,
) -> None:
    owner.execute(
        "select public.define_rate_limit_policy('pgshield_t_costly', '{\"free\": {\"60\": 5}}',"
        ' p_endpoint_costs => \'{"/big": 5000000000, "/huge": 1e30}\'::jsonb)'
    )
    answers = []
    for endpoint, cost in (("/big", 1), ("/big", 2_000_000_000), ("/huge", 1)):
        with act_as(owner, "authenticated", sub=ALICE) as c:
            answers.append(
                c.execute(
                    "select allowed, retry_after_ms from public.check_rate_limit("
                    "'pgshield_t_costly', %s, %s)",
                    (cost, endpoint),
                ).fetchone()
            )
    assert answers == [(False, -1)] * 3
    used = owner.execute(
        "select count(*) from pgshield.rate_limit_policy_state where policy = 'pgshield_t_costly'"
    ).fetchone()
    assert used == (0,)


def test_recorded_usage_on_a_token_bucket_stays_in_range(owner: psycopg.Connection) -> None:
    """A huge amount on a small token bucket is recorded (capped at 100 years), never 22008."""
    owner.execute(
        "select public.define_rate_limit_policy('pgshield_t_tokens', '{\"free\": {\"86400\": 10}}',"
        " p_algorithm => 'token_bucket')"
    )
    with act_as(owner, "service_role") as c:
        recorded = c.execute(
            "select allowed, reset_at from public.record_rate_limit_usage("
            "'pgshield_t_tokens', 'pgshield-t-heavy', 1100000000)"
        ).fetchone()
        key = c.execute(
            "select reset_at from public.record_rate_limit_key_usage("
            "'pgshield-t-heavy-key', 1, 2678400, 3500000, 'token_bucket')"
        ).fetchone()
    now = owner.execute("select pgshield.now()").fetchone()[0]  # type: ignore[index]
    assert recorded is not None and key is not None
    for reset_at in (recorded[1], key[0]):
        years = (reset_at - now).days / 365.25
        assert 99.9 < years <= 100.01, reset_at
    # The subject is refused, and a client can read the answer.
    with act_as(owner, "service_role") as c:
        answer = Shield(c).rate_limits.check("pgshield_t_tokens", subject="pgshield-t-heavy")
    assert not answer.allowed and answer.retry_after_ms == 2147483647
