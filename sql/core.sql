-- =============================================================================
-- pgshield core: the private schema, the pack's version and its one clock.
-- =============================================================================

-- Applied in one transaction: never wait long for a lock on the user's database.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create schema if not exists pgshield;
comment on schema pgshield is
  'pgshield internals: keep it out of the Data API''s exposed schemas';

-- anon gets no usage at all; authenticated and service_role may reach the few
-- pgshield functions that are granted to them one by one.
revoke all on schema pgshield from public;
grant usage on schema pgshield to authenticated, service_role;

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
