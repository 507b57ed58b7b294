"""Every pgTAP file again, on a database that already holds a project's own state.

``supabase test db`` runs the pgTAP files on a real project, next to its own policies, live rate
limit state, registered tables and users. A file may therefore assert only on what it created
itself (names starting with ``pgshield_t_``, counts of its own rows), and must leave the project's
state as it found it. The state below is what a project could hold; some of it is named like
things the files used to create, and the shipped policies are edited.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support import Backend
from tap import pgtap_files, run_pgtap_file

PGTAP_DIR = Path(__file__).parent / "pgtap"
FILES = pgtap_files(PGTAP_DIR)

USER_STATE = r"""
-- A hardened project: new functions are not executable by PUBLIC unless granted.
alter default privileges revoke execute on functions from public;

-- ---------------------------------------------------------------- users ----
create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text not null
);
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, email) values (new.id, new.email);
  return new;
end
$$;
create trigger on_auth_user_created after insert on auth.users
  for each row execute function public.handle_new_user();
insert into auth.users (id, email) values
  (gen_random_uuid(), 'alice@example.com'),
  ('00000000-0000-0000-0000-0000000000a1', 'a1@example.com'),
  ('5a0e0a52-0000-4000-8000-000000000011', 'owner@example.com');

-- ---------------------------------------------------------- rate limits ----
-- The shipped policy edited (same windows), and policies of the project's own, some named
-- like the ones the files define.
select public.define_rate_limit_policy('api',
  '{"free":       {"minute": 10,   "hour": 100,   "day": 500},
    "basic":      {"minute": 30,   "hour": 500,   "day": 5000},
    "pro":        {"minute": 100,  "hour": 2000,  "day": 20000},
    "enterprise": {"minute": 1000, "hour": 10000, "day": 100000}}',
  p_algorithm => 'sliding_window', p_allow_anonymous => true,
  p_endpoint_costs => '{"/v1/chat": 5, "/nope": 2}', p_description => 'tuned by the project');
select public.define_rate_limit_policy('search',
  '{"free": {"minute": 20, "day": 1000}, "pro": {"minute": 200}, "platinum": {"minute": 2000}}',
  p_algorithm => 'token_bucket', p_allow_anonymous => true);
select public.define_rate_limit_policy(p, '{"free": {"minute": 1}, "pro": {"hour": 1000}}')
  from unnest(array['t-api', 't-open', 't-req', 'no-such-policy', 'p', 'mine']) p;
select public.set_rate_limit_tier(s, 'pro')
  from unnest(array['alice', 'bob', 'carol', 'dave', 'erin', 'fay', 'zed', 's', 'u-ai', 'u-req',
                    'u-peek', 'c-user', 'key:abc', 'anon:unknown', 'anon:203.0.113.7',
                    '00000000-0000-0000-0000-0000000000a1']) s;

-- Expired state (on the real clock), then live state, under keys and subjects a project
-- could use, the files' old ones among them.
select pgshield.set_clock(now() - interval '2 days');
select public.increment_rate_limit(k, 10, 60) from unnest(array['user-old', 'k', 'c-fixed']) k;
select public.check_rate_limit('search', 1, null, 'user-old');
select public.check_rate_limit('api', 1, null, 'user-old');
select pgshield.reset_clock();
-- Each key twice: in a minute window (the files' old windows, expired within 60 s on the
-- real clock) and in a 31-day one (live however long the run takes).
select public.increment_rate_limit(k, 1000, w)
  from unnest(array['user-key', 'k', 'fw', 'sw', 'tb', 'live', 'svc', 'pk', 'rk', 'fk', 'sk',
                    'tk', 'never-used', 'b-1']) k, unnest(array[60, 2678400]) w;
select public.increment_rate_limit('user-day', 1000, 86400, 1, 'sliding_window');
select public.check_rate_limit('search', 1, null, s) from unnest(array['user-1', 'alice', 's']) s;
select public.check_rate_limit('api', 1, null, s)
  from unnest(array['user-2', 'alice', 'c-user', 'key:abc', 'u-req']) s;
select public.check_rate_limit('t-api', 1, null, 'alice');
select public.record_rate_limit_usage('ai_tokens', s, 1000) from unnest(array['user-3', 'u-ai']) s;
-- The project keeps its state durable.
select pgshield.set_rate_limit_storage('logged');

-- ---------------------------------------------------------------- jsonb ----
create table public.docs (id uuid primary key, body jsonb not null default '{}');
insert into public.docs (id, body) values
  ('00000000-0000-4000-8000-000000000001', '{"title": "mine"}'),
  ('00000000-0000-4000-8000-000000000007', '{"title": "also mine"}');
select pgshield.register_jsonb_target('public.docs', 'body');
create schema app;
create table app.docs (id int primary key, doc jsonb not null default '{}');
insert into app.docs (id) values (1), (7);
select pgshield.register_jsonb_target('app.docs', 'doc');
-- Tables, schemas and functions named like the ones the files used to create.
create table public.jsonb_m_docs (id bigint primary key, doc jsonb);
create table public.jsonb_f_docs (id int primary key, doc jsonb);
create table public.jsonb_r_answers (id uuid primary key, doc jsonb);
create table public.jsonb_reg_docs (id bigint primary key, doc jsonb);
insert into public.jsonb_m_docs (id, doc) values (1, '{"project": true}');
select pgshield.register_jsonb_target('public.jsonb_m_docs', 'doc');
create schema jsonb_f_other;
create function public.t_whoami() returns text language sql as $$ select 'project' $$;

-- A function of the project's own, in public and executable by anon and authenticated,
-- named like a rate limit entry point.
create function public.user_rate_limit_status() returns text
language sql stable as $$ select 'ok'::text $$;
grant execute on function public.user_rate_limit_status() to anon, authenticated;
"""

# The project's state as the owner sees it; a pgTAP file must leave all of it as it was
# (decision counters are sequences: a decision on a project's policy is never rolled back).
SNAPSHOT = """
select jsonb_build_object(
  'state', (select jsonb_agg(to_jsonb(s) order by s.key, s.policy, s.window_seconds)
              from pgshield.rate_limit_state s),
  'policy_state', (select jsonb_agg(to_jsonb(s) order by s.subject, s.policy)
                     from pgshield.rate_limit_policy_state s),
  'policies', public.get_rate_limit_policies(),
  'tiers', (select jsonb_agg(to_jsonb(t) order by t.subject)
              from pgshield.rate_limit_subject_tiers t),
  'counters', (select jsonb_agg(to_jsonb(c) order by c.policy)
                 from pgshield.rate_limit_counters c where c.policy <> ''),
  'storage', pgshield.rate_limit_storage(),
  'clock', (select jsonb_agg(to_jsonb(c)) from pgshield.clock c),
  'targets', (select jsonb_agg(to_jsonb(t) order by t.table_name)
                from pgshield.list_jsonb_targets() t),
  'docs', (select jsonb_agg(to_jsonb(d) order by d.id) from public.docs d),
  'users', (select jsonb_agg(u.email order by u.email) from auth.users u),
  'profiles', (select count(*) from public.profiles)
)
"""


def _snapshot(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SNAPSHOT).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module")
def user_state_db(backend: Backend, template_db: str) -> Iterator[str]:
    """A template: the migrated database plus a project's own state."""
    name = f"pgshield_tpl_u_{uuid.uuid4().hex[:8]}"
    dsn = backend.create(name, template_db)
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(USER_STATE)
        yield name
    finally:
        backend.drop(name)


def test_user_state_is_in_place(backend: Backend, user_state_db: str) -> None:
    """The state is there to collide with: live and expired rows, the edited seed, the table."""
    with backend.clone(user_state_db) as dsn:
        state = _snapshot(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            expired = conn.execute(
                "select (select count(*) from pgshield.rate_limit_state where expires_at <= now()),"
                " (select count(*) from pgshield.rate_limit_policy_state where expires_at <= now())"
            ).fetchone()
    assert expired is not None and expired[0] >= 2 and expired[1] >= 1
    assert len(state["state"]) - expired[0] >= 14
    assert len(state["policy_state"]) - expired[1] >= 5  # api: sliding, live for days
    assert {p["name"] for p in state["policies"]} >= {"api", "search", "t-api", "no-such-policy"}
    assert next(p for p in state["policies"] if p["name"] == "api")["allow_anonymous"]
    assert {t["table_name"] for t in state["targets"]} >= {"public.docs", "app.docs"}
    assert state["storage"] == "logged" and state["clock"] is None


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pgtap_on_user_state(path: Path, backend: Backend, user_state_db: str) -> None:
    with backend.clone(user_state_db) as dsn:
        before = _snapshot(dsn)
        result = run_pgtap_file(dsn, path)
        after = _snapshot(dsn)
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"{path.name} changed the project's {', '.join(changed)}"
