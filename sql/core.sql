-- =============================================================================
-- pgshield core: the private schema, the pack's version and its one clock.
-- =============================================================================

-- Applied in one transaction: never wait long for a lock on the user's database.
set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

create schema if not exists pgshield;
comment on schema pgshield is
  'pgshield internals: keep it out of the Data API''s exposed schemas';

-- The API roles may look names up in pgshield, so that the invoker entry points
-- in public can call the few pgshield functions granted to them one by one
-- (Supabase's Security Advisor warns about security definer functions in an
-- exposed schema). Every pgshield table, view, sequence and function revokes
-- everything from public; grants name their roles.
revoke all on schema pgshield from public;
grant usage on schema pgshield to anon, authenticated, service_role;

-- ---------------------------------------------------------------- version ----

-- The version of the installed pack.
-- Callers: authenticated, service_role. Errors: none.
create or replace function pgshield.version() returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select '0.2.0'::text $$;

revoke all on function pgshield.version() from public;
grant execute on function pgshield.version() to authenticated, service_role;

-- ------------------------------------------------------------------ clock ----
-- Every window, lease and expiry reads pgshield.now(). With no row in
-- pgshield.clock it is the database's clock_timestamp(); tests (as the owner)
-- freeze or shift it inside their own transaction. API roles can neither read
-- nor write the table, nor call the setters.

create table if not exists pgshield.clock (
  id boolean primary key default true check (id),
  frozen_at timestamptz,
  shift interval not null default interval '0'
);
comment on table pgshield.clock is
  'At most one row: moves pgshield.now() for tests. Empty in production.';
alter table pgshield.clock enable row level security;
revoke all on table pgshield.clock from public;

-- The current time for every pgshield decision.
-- Callers: pack functions (runs as the owner). Errors: none.
-- plpgsql, not sql: a sql function with a SET clause is planned again on every
-- call, which cost ~50 us here against ~10 us for a cached plpgsql plan.
create or replace function pgshield.now() returns timestamptz
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz;
begin
  select coalesce(c.frozen_at, clock_timestamp()) + c.shift into v_now from pgshield.clock c;
  return coalesce(v_now, clock_timestamp());
end
$$;

revoke all on function pgshield.now() from public;

-- Freezes the clock at p_at.
-- Callers: the owner (tests). Errors: 22023 when p_at is null.
create or replace function pgshield.set_clock(p_at timestamptz) returns timestamptz
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_at is null then
    raise exception using errcode = '22023', message = 'p_at must not be null';
  end if;
  insert into pgshield.clock as c (id, frozen_at, shift)
  values (true, p_at, interval '0')
  on conflict (id) do update set frozen_at = excluded.frozen_at, shift = interval '0';
  return pgshield.now();
end
$$;

revoke all on function pgshield.set_clock(timestamptz) from public;

-- Moves the clock forward (or back) by p_by, frozen or not.
-- Callers: the owner (tests). Errors: 22023 when p_by is null.
create or replace function pgshield.advance_clock(p_by interval) returns timestamptz
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_by is null then
    raise exception using errcode = '22023', message = 'p_by must not be null';
  end if;
  insert into pgshield.clock as c (id, shift) values (true, p_by)
  on conflict (id) do update set shift = c.shift + excluded.shift;
  return pgshield.now();
end
$$;

revoke all on function pgshield.advance_clock(interval) from public;

-- Returns the clock to the database's own time.
-- Callers: the owner (tests). Errors: none.
create or replace function pgshield.reset_clock() returns timestamptz
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  delete from pgshield.clock;
  select clock_timestamp();
$$;

revoke all on function pgshield.reset_clock() from public;

-- p_at moved by p_by (back when p_back), or null where the result would be
-- out of the timestamp range (22008), or where p_by's months and its days
-- and time have opposite signs: callers that take an interval from a caller test the
-- time it gives rather than the interval, because comparing intervals counts
-- a month as 30 days ('300000 years -107999970 days' compares as 30 days and
-- overflows when added), and a stored interval of mixed signs moves the
-- clock by an amount that changes with the date ('1 month -29 days' is 2 days
-- back from a day in January and 1 day ahead from one in March).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.time_moved(p_at timestamptz, p_by interval, p_back boolean)
returns timestamptz
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_months numeric := extract(year from p_by) * 12 + extract(month from p_by);
  v_rest numeric := extract(day from p_by) * 86400 + extract(hour from p_by) * 3600
                    + extract(minute from p_by) * 60 + extract(second from p_by);
begin
  -- ('2 days -1 hour' is a fixed length wherever it starts, in UTC.)
  if v_months * v_rest < 0 then
    return null;
  end if;
  if p_back then
    return p_at - p_by;
  end if;
  return p_at + p_by;
exception when datetime_field_overflow or interval_field_overflow then
  return null;
end
$$;

revoke all on function pgshield.time_moved(timestamptz, interval, boolean)
  from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- callers ----
-- Inside a security definer function current_user is the owner, but the
-- "role" setting still holds what SET ROLE chose (PostgREST sets it for every
-- request from the JWT). Without SET ROLE the caller is the session user.

-- The role the current API call acts as.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.caller_role() returns name
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text := current_setting('role');
begin
  return case v_role when 'none' then session_user else v_role::name end;
end
$$;

revoke all on function pgshield.caller_role() from public;

-- True when the caller is trusted server code: service_role, the owner of the
-- pgshield schema (the role that ran the migrations; on hosted Supabase
-- `postgres` is not a superuser), or a superuser / bypassrls role.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.caller_is_trusted() returns boolean
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role name := pgshield.caller_role();
  v_trusted boolean;
begin
  if v_role = 'service_role' then
    return true;
  elsif v_role in ('anon', 'authenticated') then
    return false;
  end if;
  select r.rolsuper or r.rolbypassrls
         or r.oid = (select n.nspowner from pg_catalog.pg_namespace n where n.nspname = 'pgshield')
    into v_trusted
    from pg_catalog.pg_roles r
   where r.rolname = v_role;
  return coalesce(v_trusted, false);
end
$$;

revoke all on function pgshield.caller_is_trusted() from public;

-- The rate limit subject of a signed-in caller, from the JWT's sub as
-- PostgREST sets it (request.jwt.claim.sub, else request.jwt.claims ->>
-- 'sub'): a sub that is a UUID (a Supabase Auth user id) as auth.uid()::text
-- gives it (the uuid cast's canonical text); any other sub (a third-party
-- auth provider's: Clerk, Firebase, Auth0, Cognito), where auth.uid() fails
-- with 22P02, as 'sub:' || sub, or 'subh:' || md5(sub) past 200
-- characters; null without a sub. A Supabase anonymous sign-in (claim
-- is_anonymous true) is keyed as an anonymous caller, 'anon:<address>'
-- (pgshield.anonymous_user_subject()), unless set_anonymous_users('user'):
-- each sign-in is a new user id, and a client may sign in as often as Auth
-- lets it.
-- rate_limit_check and request_guard_decide compute the same inline (a call
-- costs more than the block in a request's transaction; the uuid cast in an
-- exception block costs about 15k instructions per request, a regular
-- expression test about 50k).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.caller_subject() returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_claims jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
  v_sub text := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), v_claims ->> 'sub'), '');
  v_anon text;
begin
  if v_claims ->> 'is_anonymous' = 'true' then
    -- A Supabase anonymous sign-in: keyed by its address unless the project
    -- chose otherwise (pgshield.set_anonymous_users).
    v_anon := pgshield.anonymous_user_subject();
    if v_anon is not null then
      return v_anon;
    end if;
  end if;
  return v_sub::uuid::text;
exception when invalid_text_representation then
  return case when length(v_sub) <= 200 then 'sub:' || v_sub else 'subh:' || md5(v_sub) end;
end
$$;

revoke all on function pgshield.caller_subject() from public, anon, authenticated, service_role;

-- --------------------------------------------------------- client address ----
-- Anonymous callers are told apart by their network address, and the only
-- place PostgREST shows it is a request header that proxies fill in. A client
-- writes whatever it likes into that header; proxies that append (nginx,
-- Kong, Cloudflare's X-Forwarded-For) keep the client's entries at the front.
-- So the address is the entry `trusted_hops` from the RIGHT of the configured
-- header: the one your nearest trusted proxy wrote. With the default
-- (x-forwarded-for, 1 hop) prepending entries never changes the answer.
-- header null: no trustworthy source; every anonymous caller is one subject.
-- IPv6 addresses are grouped by prefix (/64 by default: one customer line),
-- IPv4 by /32 unless configured otherwise. See docs/security.md.

create table if not exists pgshield.client_address_source (
  id boolean primary key default true
    constraint client_address_source_id_check check (id),
  header text
    constraint client_address_source_header_check check (header ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
  trusted_hops integer not null default 1
    constraint client_address_source_hops_check check (trusted_hops between 1 and 16),
  ipv4_prefix integer not null default 32
    constraint client_address_source_ipv4_check check (ipv4_prefix between 8 and 32),
  ipv6_prefix integer not null default 64
    constraint client_address_source_ipv6_check check (ipv6_prefix between 16 and 128),
  updated_at timestamptz not null default now()
);
comment on table pgshield.client_address_source is
  'Where the client address of anonymous callers comes from. Edit with pgshield.set_client_address_source().';
alter table pgshield.client_address_source enable row level security;
revoke all on table pgshield.client_address_source from public, anon, authenticated, service_role;
insert into pgshield.client_address_source (id, header, trusted_hops, ipv4_prefix, ipv6_prefix)
values (true, 'x-forwarded-for', 1, 32, 64)
on conflict (id) do nothing;
-- How a Supabase anonymous sign-in (JWT claim is_anonymous true, role
-- authenticated) is limited: 'address', as an anonymous caller from its
-- client address (each sign-in is a fresh user id, so keying it by user would
-- give a client a new quota per sign-in), or 'user', by its user id.
alter table pgshield.client_address_source add column if not exists anonymous_users text not null default 'address'
  constraint client_address_source_anonymous_users_check check (anonymous_users in ('address', 'user'));

-- The calling client's address as a subject key: '203.0.113.7' (IPv4 /32), or
-- the network for a shorter prefix ('2001:db8:1:2::/64'); null when the
-- configured header is missing, has fewer entries than trusted hops, or its
-- entry is not an address. Reads request.headers as PostgREST sets it; of a
-- header longer than 4,096 characters only the last 4,096 (the proxies'
-- entries). An IPv4-mapped IPv6 address counts as its IPv4 address.
-- Callers: pack functions (runs as the owner). Errors: none.
create or replace function pgshield.client_address() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_src pgshield.client_address_source;
  v_raw text;
  v_parts text[];
  v_entry text;
  v_ip inet;
begin
  select * into v_src from pgshield.client_address_source s where s.id;
  if v_src.header is null then
    return null;
  end if;
  v_raw := nullif(current_setting('request.headers', true), '')::jsonb ->> v_src.header;
  if v_raw is null then
    return null;
  end if;
  -- Proxies append on the right: a client's padding on the left is cut off,
  -- and never makes the trusted entry unreadable.
  if length(v_raw) > 4096 then
    v_raw := right(v_raw, 4096);
  end if;
  v_parts := string_to_array(v_raw, ',');
  if cardinality(v_parts) < v_src.trusted_hops then
    return null;
  end if;
  v_entry := btrim(v_parts[cardinality(v_parts) - v_src.trusted_hops + 1]);
  if v_entry ~ '^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$' then
    v_entry := substring(v_entry from '^\[([0-9A-Fa-f:.]+)\]');
  elsif v_entry ~ '^[0-9.]{7,15}:[0-9]{1,5}$' then
    v_entry := split_part(v_entry, ':', 1);
  end if;
  if v_entry !~ '^[0-9A-Fa-f:.]{2,45}$' then
    return null;
  end if;
  begin
    v_ip := v_entry::inet;
  exception when invalid_text_representation then
    return null;
  end;
  -- An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) is IPv4.
  if family(v_ip) = 6 and v_ip << inet '::ffff:0:0/96' then
    v_ip := substring(host(v_ip) from 8)::inet;
  end if;
  v_ip := network(set_masklen(v_ip,
    case when family(v_ip) = 4 then v_src.ipv4_prefix else v_src.ipv6_prefix end));
  return case when masklen(v_ip) = case when family(v_ip) = 4 then 32 else 128 end
              then host(v_ip) else v_ip::text end;
end
$$;

revoke all on function pgshield.client_address() from public, anon, authenticated, service_role;

-- Sets where client addresses come from; returns the new setting.
--   hosted Supabase:            p_header => 'cf-connecting-ip' (set by Cloudflare)
--   self-hosted, Kong in front: p_header => 'x-forwarded-for', p_trusted_hops => 1
--   one more proxy before Kong: p_trusted_hops => 2
--   PostgREST reachable directly (no proxy): p_header => null
-- Callers: service_role, the owner. Errors: 22023 bad header, hops or prefix; 42501 others.
create or replace function pgshield.set_client_address_source(
  p_header text,
  p_trusted_hops integer default 1,
  p_ipv4_prefix integer default 32,
  p_ipv6_prefix integer default 64
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set the client address source';
  end if;
  if p_header is not null and lower(p_header) !~ '^[a-z0-9][a-z0-9-]{0,63}$' then
    raise exception using errcode = '22023', message = 'p_header must be a header name (letters, digits, -) or null',
      hint = 'e.g. x-forwarded-for, cf-connecting-ip, x-real-ip';
  end if;
  if p_trusted_hops is null or p_trusted_hops not between 1 and 16 then
    raise exception using errcode = '22023', message = 'p_trusted_hops must be between 1 and 16';
  end if;
  if p_ipv4_prefix is null or p_ipv4_prefix not between 8 and 32 then
    raise exception using errcode = '22023', message = 'p_ipv4_prefix must be between 8 and 32';
  end if;
  if p_ipv6_prefix is null or p_ipv6_prefix not between 16 and 128 then
    raise exception using errcode = '22023', message = 'p_ipv6_prefix must be between 16 and 128';
  end if;
  insert into pgshield.client_address_source as s (id, header, trusted_hops, ipv4_prefix, ipv6_prefix, updated_at)
  values (true, lower(p_header), p_trusted_hops, p_ipv4_prefix, p_ipv6_prefix, now())
  on conflict (id) do update
     set header = excluded.header, trusted_hops = excluded.trusted_hops,
         ipv4_prefix = excluded.ipv4_prefix, ipv6_prefix = excluded.ipv6_prefix, updated_at = now();
  return pgshield.client_address_source();
end
$$;

revoke all on function pgshield.set_client_address_source(text, integer, integer, integer)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.set_client_address_source(text, integer, integer, integer) to service_role;

-- The current client address source as JSON.
-- Callers: service_role, the owner. Errors: 42501 others.
create or replace function pgshield.client_address_source() returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may read the client address source';
  end if;
  return (select jsonb_build_object('header', s.header, 'trusted_hops', s.trusted_hops,
                                    'ipv4_prefix', s.ipv4_prefix, 'ipv6_prefix', s.ipv6_prefix,
                                    'anonymous_users', s.anonymous_users, 'updated_at', s.updated_at)
            from pgshield.client_address_source s where s.id);
end
$$;

revoke all on function pgshield.client_address_source() from public, anon, authenticated, service_role;
grant execute on function pgshield.client_address_source() to service_role;

-- The subject of a Supabase anonymous sign-in: 'anon:<client address>' (or
-- 'anon:unknown'), the key of anonymous callers, or null when the project
-- keys them by user (set_anonymous_users('user')).
-- Callers: pack functions (runs as the owner). Errors: none.
create or replace function pgshield.anonymous_user_subject() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if (select s.anonymous_users from pgshield.client_address_source s where s.id) = 'user' then
    return null;
  end if;
  return 'anon:' || coalesce(pgshield.client_address(), 'unknown');
end
$$;

revoke all on function pgshield.anonymous_user_subject() from public, anon, authenticated, service_role;

-- How Supabase anonymous sign-ins are limited: p_keyed_by 'address' (the
-- default: as anonymous callers, by client address) or 'user' (each by its
-- user id: a client then gets a fresh quota with every sign-in). Returns the
-- client address source.
-- Callers: service_role, the owner. Errors: 22023 bad mode; 42501 others.
create or replace function pgshield.set_anonymous_users(p_keyed_by text) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set how anonymous users are limited';
  end if;
  if p_keyed_by is null or p_keyed_by not in ('address', 'user') then
    raise exception using errcode = '22023', message = 'p_keyed_by must be address or user',
      hint = 'address: as anonymous callers, by client address; user: each sign-in by its user id';
  end if;
  update pgshield.client_address_source s set anonymous_users = p_keyed_by, updated_at = now() where s.id;
  return pgshield.client_address_source();
end
$$;

revoke all on function pgshield.set_anonymous_users(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_anonymous_users(text) to service_role;

-- ------------------------------------------------------------ pack types ----
-- Refuses (42501) a composite type the pack means to own when it exists with
-- another owner or other fields: a look-alike made beforehand by someone else
-- (say, with a field whose domain CHECK calls their function) would run their
-- code inside the pack's functions, as the pack's owner. p_fields lists
-- "name type" pairs as format_type() spells them, comma separated.
-- Callers: the migrations (the owner). Errors: 42501.
create or replace function pgshield.assert_pack_type(p_type text, p_fields text) returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_type oid := to_regtype(p_type);
  v_owner oid;
  v_fields text;
begin
  if v_type is null then
    return;
  end if;
  select t.typowner,
         (select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' order by a.attnum)
            from pg_attribute a
           where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped)
    into v_owner, v_fields
    from pg_type t where t.oid = v_type;
  if v_owner <> (select n.nspowner from pg_namespace n where n.nspname = 'pgshield')
     or v_fields is distinct from p_fields then
    raise exception using errcode = '42501',
      message = format('%s exists but was not created by pgshield (owner %s)', p_type, v_owner::regrole),
      detail = format('expected fields: %s; found: %s', p_fields, coalesce(v_fields, 'not a composite type')),
      hint = 'it is not yours: find out who made it, drop it, then apply the migrations again';
  end if;
end
$$;

revoke all on function pgshield.assert_pack_type(text, text) from public, anon, authenticated, service_role;
