-- =============================================================================
-- pgshield compat stub: what a Supabase database provides and pgshield relies on.
--
-- For vanilla Postgres only (the embedded cluster and the tests). Never apply it
-- to a Supabase project: it refuses when auth.users exists and was not made here.
-- Roles are cluster-wide and created only when missing; everything else is
-- per database and idempotent.
-- =============================================================================

do $$
begin
  if to_regclass('auth.users') is not null
     and coalesce(obj_description(to_regclass('auth.users'), 'pg_class'), '')
         not like 'pgshield compat stub%' then
    raise exception using
      errcode = '55000',
      message = 'auth.users already exists and was not created by the pgshield compat stub',
      hint = 'This looks like a real Supabase database: apply only migrations/, never sql/compat/.';
  end if;
end
$$;

-- ---------------------------------------------------------------- roles ------
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

-- Hosted Supabase's `postgres` is not a superuser (that is supabase_admin): it
-- owns what it creates, applies the migrations (`supabase db push`, `pgshield
-- migrate`) and runs `supabase test db`. The bootstrap superuser of a vanilla
-- cluster is usually called postgres, so the stand-in has another name:
-- supabase_postgres, with hosted postgres's attributes and memberships
-- (Supabase: `grant anon, authenticated, service_role to postgres`). It has no
-- password here; it logs in where pg_hba trusts (the embedded cluster), or the
-- tests give it one.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'supabase_postgres') then
    create role supabase_postgres login nosuperuser inherit createrole createdb replication bypassrls;
  end if;
end
$$;

grant anon, authenticated, service_role to supabase_postgres;

-- ----------------------------------------------------------- extensions ------
-- As on Supabase: usage for postgres and the API roles only, not for PUBLIC (a
-- role a test creates cannot reach pgTAP there either).
create schema if not exists extensions;
revoke all on schema extensions from public;
grant usage on schema extensions to anon, authenticated, service_role;
grant all on schema extensions to supabase_postgres;

-- ------------------------------------------------------------- public -------
-- Supabase grants everything in public to the API roles by default; the pack
-- must therefore revoke explicitly, and reproducing this keeps the tests honest.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on sequences to anon, authenticated, service_role;
-- ... also for what postgres creates (there: supabase_postgres), the migrations included.
alter default privileges for role supabase_postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role supabase_postgres in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role supabase_postgres in schema public
  grant all on sequences to anon, authenticated, service_role;

-- --------------------------------------------------------------- auth -------
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  id uuid primary key,
  email text,
  email_confirmed_at timestamptz,
  raw_app_meta_data jsonb not null default '{}',
  raw_user_meta_data jsonb not null default '{}',
  created_at timestamptz not null default now()
);
-- Stubs made before email_confirmed_at was added (null: unconfirmed, as in Supabase).
alter table auth.users add column if not exists email_confirmed_at timestamptz;
comment on table auth.users is 'pgshield compat stub: stands in for Supabase Auth users';
-- Supabase grants postgres all on schema auth and its tables (sign-up triggers, tests).
grant all on schema auth to supabase_postgres;
grant all on table auth.users to supabase_postgres;

-- The claims of the current request, as PostgREST sets them; an empty or
-- missing setting means no claims. Like Supabase's own, these have no SET
-- clause, so the planner inlines them into the query that calls them.
create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
  )::text
$$;

grant execute on function auth.jwt(), auth.uid(), auth.role()
  to anon, authenticated, service_role;
grant all on function auth.jwt(), auth.uid(), auth.role() to supabase_postgres;
