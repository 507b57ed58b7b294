-- =============================================================================
-- pgshield guard: rate limits in front of the Data API itself.
--
-- PostgREST runs one configured function before every request
-- (db-pre-request), inside the request's own transaction, with the request's
-- role, JWT claims, headers, method and path as settings. The guard is that
-- function: it finds the first rule that matches the request and decides it
-- under the rule's rate limit policy, exactly as check_rate_limit does (one
-- truth, the same state).
--
-- Everything lives in schema pgshield (not exposed by the Data API):
--   request_guard()            the hook PostgREST calls        anon, authenticated, service_role
--     (invoker: a chained project hook runs with the request's rights; the
--     decision is request_guard_decide(), security definer)
--   define_guard_rule / drop_guard_rule / guard_rules()         service_role, owner
--   set_guard_options / guard_options()                         service_role, owner
--   install_request_guard / uninstall_request_guard /
--   request_guard_status()                                      owner (ALTER ROLE authenticator)
--
-- Answers PostgREST understands: a denial raises SQLSTATE 'PGRST' with a JSON
-- message (code PT429) and a JSON detail carrying status 429 and the headers
-- Retry-After, RateLimit and RateLimit-Policy; an allowed request may carry
-- RateLimit / RateLimit-Policy through response.headers.
-- Read-only requests (GET, HEAD: PostgREST runs them read only) are checked
-- against the quota but never counted: nothing can be written there.
-- =============================================================================

-- position and cost are bounded by checks far below 2^31.
-- squawk-ignore-file prefer-bigint-over-int

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- ------------------------------------------------------------------ rules ----
-- The first rule (lowest position, then id) whose role, method and path match
-- a request decides it. role '*' matches anon and authenticated, never
-- service_role: server code is exempt unless a rule names service_role.
-- path is PostgREST's request.path ('/todos', '/rpc/send_message') with its
-- %XX escapes decoded (as PostgREST routes it: /%74odos is /todos), matched
-- exactly, or as a prefix when the pattern ends in '*' ('/rpc/*'); '*' alone
-- matches every path. method GET also matches HEAD. action 'exempt' lets matching requests through
-- uncounted (put it before broader rules).

create table if not exists pgshield.guard_rules (
  id bigint generated always as identity primary key,
  position integer not null default 100
    constraint guard_rules_position_check check (position between 0 and 1000000),
  role text not null default '*'
    constraint guard_rules_role_check check (role in ('*', 'anon', 'authenticated', 'service_role')),
  method text not null default '*'
    constraint guard_rules_method_check check (method in ('*', 'GET', 'HEAD', 'POST', 'PATCH', 'PUT', 'DELETE')),
  path text not null default '*'
    constraint guard_rules_path_check check (path ~ '^(\*|/[A-Za-z0-9_./-]{0,200}\*?)$'),
  path_like text not null,
  action text not null default 'limit'
    constraint guard_rules_action_check check (action in ('limit', 'exempt')),
  -- A policy a rule names cannot be dropped (drop_rate_limit_policy answers
  -- 2BP01): dropping it used to drop its rules, and the paths went unlimited.
  policy text
    constraint guard_rules_policy_fkey references pgshield.rate_limit_policies (name) on delete restrict,
  cost integer not null default 1
    constraint guard_rules_cost_check check (cost between 1 and 1000000),
  description text
    constraint guard_rules_description_check check (length(description) <= 500),
  created_at timestamptz not null default now(),
  constraint guard_rules_policy_check check ((action = 'limit') = (policy is not null))
);
comment on table pgshield.guard_rules is
  'Data API guard rules: the first match (position, id) decides a request. Edit with pgshield.define_guard_rule().';
alter table pgshield.guard_rules enable row level security;
revoke all on table pgshield.guard_rules from public, anon, authenticated, service_role;

create table if not exists pgshield.guard_options (
  id boolean primary key default true
    constraint guard_options_id_check check (id),
  allowed_headers boolean not null default true,
  chained_function text
    constraint guard_options_chained_check check (chained_function ~ '^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$'),
  updated_at timestamptz not null default now()
);
comment on table pgshield.guard_options is
  'Data API guard options: headers on allowed responses, the pre-request function chained before the guard.';
alter table pgshield.guard_options enable row level security;
revoke all on table pgshield.guard_options from public, anon, authenticated, service_role;
insert into pgshield.guard_options (id) values (true) on conflict (id) do nothing;

-- ------------------------------------------------------------------- hook ----

-- request.path as PostgREST routes it: the first 1,000 characters with their
-- %XX escapes of ASCII characters (but NUL) decoded, then the rest as sent
-- (no rule path is that long), with a leading '/' when it has none (a target
-- sent without it, an empty or missing path). Other escapes stay as they
-- are: no rule can name a character outside [A-Za-z0-9_./-].
-- Callers: request_guard_decide. Errors: none.
create or replace function pgshield.guard_decoded_path(p_path text) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case when left(d.p, 1) = '/' then d.p else '/' || d.p end
    from (select coalesce(string_agg(case when r.m[1] is not null
                                          then chr(get_byte(decode(r.m[1], 'hex'), 0))
                                          else r.m[2] end, '' order by r.n), '')
                 || coalesce(substr(p_path, 1001), '') as p
            from regexp_matches(left(coalesce(p_path, ''), 1000),
                                '%(0[1-9A-Fa-f]|[1-7][0-9A-Fa-f])|(%|[^%]+)', 'g')
                 with ordinality r(m, n)) d
$$;

revoke all on function pgshield.guard_decoded_path(text) from public, anon, authenticated, service_role;

-- The decision behind request_guard(): the first matching rule, the subject,
-- the rate limit decision, and the answer. The subject is the user id for
-- authenticated callers (pgshield.caller_subject(): a third-party auth
-- provider's sub as 'sub:<sub>'), the client address (pgshield.client_address(): the
-- configured header and trusted proxy hops, never the first x-forwarded-for
-- entry) for anon, 'service_role' for service_role. Read-only transactions
-- are checked, not counted (on a read replica with unlogged state: not
-- checked). Allowed: the rate limit headers are appended to
-- response.headers (what the project's hook set stays). Denied: SQLSTATE
-- PGRST, which PostgREST turns into HTTP 429 with the headers. The rule, its
-- policy and the options are one read.
-- Callers: request_guard (anon, authenticated, service_role).
-- Errors: PGRST (429) when the quota is used up.
create or replace function pgshield.request_guard_decide() returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text := current_setting('role');
  v_method text := upper(coalesce(nullif(current_setting('request.method', true), ''), 'GET'));
  -- A GET rule covers HEAD too (the same read, without the body).
  v_read text := case when v_method = 'HEAD' then 'GET' else v_method end;
  -- PostgREST routes by the decoded path but sets request.path as sent; a
  -- target sent without its leading '/' (its server takes "POST todos") is
  -- routed as if it had one, so it is matched with one. The common path (a
  -- '/' and no '%') is taken as it is, with one test.
  v_path text := case when current_setting('request.path', true) ~ '^/[^%]*$'
                      then current_setting('request.path', true)
                      else pgshield.guard_decoded_path(current_setting('request.path', true)) end;
  v_rule record;
  v_policy pgshield.rate_limit_policies;
  v_subject text;
  v_claims jsonb;
begin
  if v_role = 'none' then
    v_role := session_user;
  end if;
  select x.cost, p as policy,
         (select o.allowed_headers from pgshield.guard_options o where o.id) as allowed_headers
    into v_rule
    from (select r.cost, r.policy from pgshield.guard_rules r
           where (r.role = v_role or (r.role = '*' and v_role in ('anon', 'authenticated')))
             and r.method in ('*', v_method, v_read)
             and v_path like r.path_like
           order by r.position, r.id
           limit 1) x
    left join pgshield.rate_limit_policies p on p.name = x.policy;
  if not found or v_rule.policy is null then
    return;  -- no rule, or an exempt one
  end if;
  v_policy := v_rule.policy;
  -- Each branch is its own statement: only the one taken is prepared.
  if v_role = 'authenticated' then
    -- pgshield.caller_subject(), inline.
    v_claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    v_subject := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                                 v_claims ->> 'sub'), '');
    begin
      v_subject := v_subject::uuid::text;
    exception when invalid_text_representation then
      v_subject := case when length(v_subject) <= 200 then 'sub:' || v_subject
                        else 'subh:' || md5(v_subject) end;
    end;
    if v_claims ->> 'is_anonymous' = 'true' then  -- a Supabase anonymous sign-in
      v_subject := coalesce(pgshield.anonymous_user_subject(), v_subject);
    end if;
  elsif v_role <> 'anon' then
    v_subject := v_role;
  end if;
  if v_subject is null then  -- anon, or authenticated without a user id
    v_subject := 'anon:' || coalesce(pgshield.client_address(), 'unknown');
  end if;
  -- Allowed: the decision appends the rate limit headers (the IETF httpapi
  -- draft's RateLimit and RateLimit-Policy) to response.headers, unless the
  -- owner turned them off; what the project's hook set stays. Denied: it
  -- raises SQLSTATE PGRST with the 429 and its headers (Retry-After too when
  -- a wait can help).
  if current_setting('transaction_read_only') = 'on' then
    -- A read (GET, HEAD) is checked, not counted. On a read replica (Supabase
    -- sends GETs there through its API load balancer) unlogged state cannot
    -- be read at all: the read passes unchecked rather than failing (0A000).
    -- With logged state (set_rate_limit_storage('logged')) the replica checks
    -- it against the replicated counts, a moment behind the primary's.
    if pg_is_in_recovery() then
      if (select c.relpersistence from pg_class c
           where c.oid = 'pgshield.rate_limit_policy_state'::regclass) = 'u' then
        return;
      end if;
    end if;
    -- In the guard's modes the decision is null when allowed and raises the
    -- 429 when denied. (A test of an expression, not PERFORM: no query.)
    if pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
         case when coalesce(v_rule.allowed_headers, true) then 'guard_peek' else 'guard_silent_peek' end) is null then
      return;
    end if;
  elsif pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
          case when coalesce(v_rule.allowed_headers, true) then 'guard' else 'guard_silent' end) is null then
    return;
  end if;
end
$$;

revoke all on function pgshield.request_guard_decide() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_decide() to anon, authenticated, service_role;

-- The db-pre-request hook PostgREST calls before every request, as the
-- request's role. It runs as the invoker: the project's own pre-request
-- function, when one is chained, runs first with the request's own rights
-- (as PostgREST would call it; it sees search_path pg_catalog, pg_temp, so it
-- should pin its own); then pgshield.request_guard_decide() decides. Its body
-- is written by pgshield.guard_set_chained (install_request_guard): with a
-- chained function it calls that first, by name, so a request reads no table
-- to find it. Without one (as here) it only decides.
-- Callers: PostgREST as anon, authenticated, service_role (it only ever
-- limits the caller itself).
-- Errors: PGRST (429) when the quota is used up; whatever the chained hook raises.
create or replace function pgshield.request_guard() returns void
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.request_guard_decide();
end
$$;

revoke all on function pgshield.request_guard() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard() to anon, authenticated, service_role;

-- ------------------------------------------------------------ rule editing ----

-- Adds a rule; returns it as JSON.
-- Callers: service_role, the owner.
-- Errors: 22023 bad role, method, path (one PostgREST never routes too),
-- cost, position or action, unknown policy; 42501 others.
create or replace function pgshield.define_guard_rule(
  p_policy text,
  p_role text default '*',
  p_method text default '*',
  p_path text default '*',
  p_cost integer default 1,
  p_position integer default 100,
  p_action text default 'limit',
  p_description text default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may define guard rules';
  end if;
  if p_action is null or p_action not in ('limit', 'exempt') then
    raise exception using errcode = '22023', message = 'p_action must be limit or exempt';
  end if;
  if p_role is null or p_role not in ('*', 'anon', 'authenticated', 'service_role') then
    raise exception using errcode = '22023', message = 'p_role must be *, anon, authenticated or service_role',
      hint = '* matches anon and authenticated; service_role only when named';
  end if;
  if p_method is null or upper(p_method) not in ('*', 'GET', 'HEAD', 'POST', 'PATCH', 'PUT', 'DELETE') then
    raise exception using errcode = '22023', message = 'p_method must be *, GET, HEAD, POST, PATCH, PUT or DELETE';
  end if;
  -- Only what PostgREST routes: /<table> and /rpc/<function> (a rule on
  -- anything else, such as /rest/v1/todos or /todos/1, would never match).
  if p_path is null or p_path !~ '^(\*|/(rpc/)?[A-Za-z0-9_.-]{0,200}\*?)$' then
    raise exception using errcode = '22023',
      message = 'p_path must be *, /<table> or /rpc/<function>, exact or ending in *',
      hint = case when p_path ~ '^/rest/v1(/|$)'
                  then 'PostgREST sees the path after the gateway''s /rest/v1: write /todos, not /rest/v1/todos'
                  else 'PostgREST routes /<table> and /rpc/<function> only; a trailing * matches any rest (/rpc/*)' end;
  end if;
  if p_cost is null or p_cost not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_cost must be between 1 and 1000000';
  end if;
  if p_position is null or p_position not between 0 and 1000000 then
    raise exception using errcode = '22023', message = 'p_position must be between 0 and 1000000';
  end if;
  if p_description is not null and length(p_description) > 500 then
    raise exception using errcode = '22023', message = 'p_description must be at most 500 characters';
  end if;
  if p_action = 'limit' then
    perform pgshield.rate_limit_policy(p_policy);
  elsif p_policy is not null then
    raise exception using errcode = '22023', message = 'an exempt rule takes no p_policy';
  end if;
  insert into pgshield.guard_rules (position, role, method, path, path_like, action, policy, cost, description)
  values (p_position, p_role, upper(p_method), p_path,
          case when p_path = '*' then '%'
               else replace(replace(rtrim(p_path, '*'), '_', '\_'), '%', '\%')
                    || case when right(p_path, 1) = '*' then '%' else '' end end,
          p_action, case when p_action = 'limit' then p_policy end, p_cost, p_description)
  returning id into v_id;
  return (select r.rule from pgshield.guard_rule_list() r where (r.rule ->> 'id')::bigint = v_id);
end
$$;

revoke all on function pgshield.define_guard_rule(text, text, text, text, integer, integer, text, text)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.define_guard_rule(text, text, text, text, integer, integer, text, text)
  to service_role;

-- Deletes a rule; returns whether it existed.
-- Callers: service_role, the owner. Errors: 22023 null id; 42501 others.
create or replace function pgshield.drop_guard_rule(p_id bigint) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may drop guard rules';
  end if;
  if p_id is null then
    raise exception using errcode = '22023', message = 'p_id must not be null';
  end if;
  delete from pgshield.guard_rules r where r.id = p_id;
  return found;
end
$$;

revoke all on function pgshield.drop_guard_rule(bigint) from public, anon, authenticated, service_role;
grant execute on function pgshield.drop_guard_rule(bigint) to service_role;

-- Every rule, in the order they are tried, one JSON object each.
-- Callers: service_role, the owner. Errors: 42501 others.
create or replace function pgshield.guard_rule_list() returns table (rule jsonb)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may read the guard rules';
  end if;
  return query
  select jsonb_build_object('id', r.id, 'position', r.position, 'role', r.role, 'method', r.method,
                            'path', r.path, 'action', r.action, 'policy', r.policy, 'cost', r.cost,
                            'description', r.description)
    from pgshield.guard_rules r
   order by r.position, r.id;
end
$$;

revoke all on function pgshield.guard_rule_list() from public, anon, authenticated, service_role;
grant execute on function pgshield.guard_rule_list() to service_role;

-- Whether allowed responses carry RateLimit / RateLimit-Policy headers.
-- Returns the options. Callers: service_role, the owner.
-- Errors: 22023 null; 42501 others.
create or replace function pgshield.set_guard_options(p_allowed_headers boolean) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set guard options';
  end if;
  if p_allowed_headers is null then
    raise exception using errcode = '22023', message = 'p_allowed_headers must not be null';
  end if;
  update pgshield.guard_options o set allowed_headers = p_allowed_headers, updated_at = now() where o.id;
  return pgshield.request_guard_status();
end
$$;

revoke all on function pgshield.set_guard_options(boolean) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_guard_options(boolean) to service_role;

-- ------------------------------------------------------------ installation ----

-- The pre-request function PostgREST is told to call in this database: the
-- authenticator's setting for this database, else its setting for all
-- databases (PostgREST's in-database configuration reads both).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.guard_configured_hook() returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select substr(c.setting, length('pgrst.db_pre_request=') + 1)
    from pg_db_role_setting s
   cross join lateral unnest(s.setconfig) c(setting)
   where s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
     and s.setdatabase in (0, (select d.oid from pg_database d where d.datname = current_database()))
     and c.setting like 'pgrst.db\_pre\_request=%'
   order by s.setdatabase desc
   limit 1
$$;

revoke all on function pgshield.guard_configured_hook() from public, anon, authenticated, service_role;

-- The pre-request function a db-pre-config function (PostgREST's other
-- in-database configuration, authenticator's pgrst.db_pre_config) sets, or
-- null. PostgREST lets authenticator's own pgrst.db_pre_request setting
-- override it, so install_request_guard must see it before it writes that.
-- The function is run as PostgREST runs it, under authenticator's
-- search_path, in a subtransaction that is rolled back (what it sets is read
-- first), and only when the caller owns it or a superuser does: it runs with
-- the caller's rights. One that cannot be run, or fails, is refused (55000):
-- what it sets cannot be known, and guessing "nothing" would replace a hook.
-- Callers: install_request_guard, uninstall_request_guard (the owner).
-- Errors: 55000 as above.
create or replace function pgshield.guard_preconfigured_hook() returns text
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_setting text;
  v_fn regprocedure;
  v_sql text;
  v_path text;
  v_hook text;
  v_ran boolean := false;
  v_error text;
begin
  select substr(c.setting, length('pgrst.db_pre_config=') + 1) into v_setting
    from pg_db_role_setting s
   cross join lateral unnest(s.setconfig) c(setting)
   where s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
     and s.setdatabase in (0, (select d.oid from pg_database d where d.datname = current_database()))
     and c.setting like 'pgrst.db\_pre\_config=%'
   order by s.setdatabase desc
   limit 1;
  if v_setting is null then
    return null;
  end if;
  begin
    v_fn := to_regprocedure(v_setting || '()');
  exception when others then
    v_fn := null;
  end;
  if v_fn is null then
    raise exception using errcode = '55000',
      message = format('authenticator''s pgrst.db_pre_config names %L, not a function without arguments here',
                       left(v_setting, 200)),
      hint = 'PostgREST cannot run it either: fix or reset that setting, then install again';
  end if;
  if not exists (select 1 from pg_proc p join pg_roles o on o.oid = p.proowner
                  where p.oid = v_fn and (o.rolname = current_user or o.rolsuper)) then
    raise exception using errcode = '55000',
      message = format('cannot tell what the db-pre-config function %s sets without running it, and it is not yours',
                       v_fn::oid::regproc),
      hint = 'run install_request_guard() as its owner, or set the hook on authenticator (pgrst.db_pre_request)';
  end if;
  -- The search_path PostgREST's connection has: authenticator's setting (for
  -- this database, then all), the database's, else the server's default.
  select coalesce(
           (select substr(c.setting, length('search_path=') + 1)
              from pg_db_role_setting s cross join lateral unnest(s.setconfig) c(setting)
             where c.setting like 'search\_path=%'
               and ((s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
                     and s.setdatabase in (0, d.oid))
                    or (s.setrole = 0 and s.setdatabase = d.oid))
             order by s.setrole = 0, s.setdatabase = 0
             limit 1),
           (select g.boot_val from pg_settings g where g.name = 'search_path'))
    into v_path
    from pg_database d where d.datname = current_database();
  v_sql := format('select %s()', v_fn::oid::regproc);
  begin
    perform pg_catalog.set_config('pgrst.db_pre_request', '', true);
    perform pg_catalog.set_config('search_path', v_path, true);
    execute v_sql;
    v_hook := nullif(pg_catalog.current_setting('pgrst.db_pre_request', true), '');
    v_ran := true;
    raise exception using errcode = 'P0001', message = 'pgshield: roll the db-pre-config back';
  exception when others then
    if not v_ran then
      v_error := sqlstate || ': ' || sqlerrm;
    end if;
  end;
  if not v_ran then
    raise exception using errcode = '55000',
      message = format('the db-pre-config function %s failed when run to see what it sets (%s)',
                       v_fn::oid::regproc, left(v_error, 300)),
      hint = 'fix it (PostgREST fails loading it too), or set the hook on authenticator (pgrst.db_pre_request)';
  end if;
  return v_hook;
end
$$;

revoke all on function pgshield.guard_preconfigured_hook() from public, anon, authenticated, service_role;

-- Whether the guard is installed, what it chains, its options and rules count.
-- Callers: service_role, the owner. Errors: 42501 others.
create or replace function pgshield.request_guard_status() returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hook text := pgshield.guard_configured_hook();
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may read the guard status';
  end if;
  return (select jsonb_build_object(
            'installed', coalesce(v_hook = 'pgshield.request_guard', false),
            'pre_request', v_hook,
            'chained_function', o.chained_function,
            'allowed_headers', o.allowed_headers,
            'rules', (select count(*) from pgshield.guard_rules))
            from pgshield.guard_options o where o.id);
end
$$;

revoke all on function pgshield.request_guard_status() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_status() to service_role;

-- Records the pre-request function chained before the guard (schema.name,
-- or null for none) in guard_options, and writes request_guard()'s body to
-- call it first (the hook then finds it without a lookup per request).
-- Callers: install_request_guard, uninstall_request_guard (service_role, the
-- owner). Errors: 22023 not a schema-qualified function without arguments,
-- or one of pgshield's.
create or replace function pgshield.guard_set_chained(p_function text) returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $fn$
begin
  -- pg_temp names this session's own temporary schema: every other session
  -- would fail calling it (42883).
  if p_function is not null and (p_function !~ '^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$'
                                 or split_part(p_function, '.', 1) ~ '^pg_temp'
                                 or to_regprocedure(p_function || '()') is null) then
    raise exception using errcode = '22023',
      message = format('%L is not a schema-qualified function without arguments', p_function);
  end if;
  -- The guard chained to itself would recurse (54001) or count twice.
  if split_part(p_function, '.', 1) = 'pgshield' then
    raise exception using errcode = '22023',
      message = format('%L is pgshield''s own: only a project''s pre-request function can be chained', p_function);
  end if;
  update pgshield.guard_options o set chained_function = p_function, updated_at = now() where o.id;
  execute format($ddl$create or replace function pgshield.request_guard() returns void
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $body$
begin
%s  perform pgshield.request_guard_decide();
end
$body$$ddl$,
    case when p_function is null then ''
         else format('  perform %I.%I();', split_part(p_function, '.', 1), split_part(p_function, '.', 2)) || chr(10)
    end);
end
$fn$;

revoke all on function pgshield.guard_set_chained(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.guard_set_chained(text) to service_role;

-- Makes PostgREST call the guard before every request in this database:
-- ALTER ROLE authenticator IN DATABASE <this> SET pgrst.db_pre_request, then
-- NOTIFY pgrst, 'reload config'. Idempotent. A different pre-request function
-- already configured (in authenticator's settings, or by the function its
-- pgrst.db_pre_config names) is refused, unless p_chain: then it is kept and runs
-- first, before the guard; a chained function dropped since is forgotten
-- (run it again after dropping one). Runs with the caller's rights (altering
-- authenticator needs CREATEROLE: on Supabase, postgres has it; service_role
-- may call it and gets a clear 42501 where it lacks that right).
-- Callers: the owner (service_role). Errors: 55000 another hook without p_chain, or a
-- db-pre-config function that cannot be run to see what it sets; 42501 not
-- allowed to alter authenticator; 22023 a hook that is not a function.
create or replace function pgshield.install_request_guard(p_chain boolean default false) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hook text;
  v_fn regprocedure;
begin
  if not exists (select 1 from pg_roles r
                  where r.rolname = current_user and (r.rolsuper or r.rolcreaterole)) then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run install_request_guard() as the project owner (postgres on Supabase)';
  end if;
  -- A hook set by a db-pre-config function counts as configured too: the
  -- setting written below would override it without a word.
  v_hook := coalesce(pgshield.guard_configured_hook(), pgshield.guard_preconfigured_hook());
  if v_hook is not null and v_hook <> 'pgshield.request_guard' then
    if not coalesce(p_chain, false) then
      raise exception using errcode = '55000',
        message = format('PostgREST already calls %s before each request', v_hook),
        hint = 'install_request_guard(p_chain => true) keeps it and runs it before the guard';
    end if;
    v_fn := to_regprocedure(v_hook || '()');
    if v_fn is null or v_hook !~ '^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$' then
      raise exception using errcode = '22023',
        message = format('the configured pre-request %L is not a schema-qualified function without arguments', v_hook);
    end if;
    perform pgshield.guard_set_chained(v_hook);
  elsif v_hook is null
        or (select to_regprocedure(o.chained_function || '()') is null and o.chained_function is not null
              from pgshield.guard_options o where o.id) then
    -- Nothing else is configured, or the function chained by an earlier
    -- install was dropped since (every request would fail calling it): the
    -- guard forgets it.
    perform pgshield.guard_set_chained(null);
  end if;
  begin
    execute format('alter role authenticator in database %I set pgrst.db_pre_request = %L',
                   current_database(), 'pgshield.request_guard');
  exception when insufficient_privilege then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run install_request_guard() as the project owner (postgres on Supabase)';
  end;
  perform pg_notify('pgrst', 'reload config');
  return pgshield.request_guard_status();
end
$$;

revoke all on function pgshield.install_request_guard(boolean) from public, anon, authenticated, service_role;
grant execute on function pgshield.install_request_guard(boolean) to service_role;

-- Stops PostgREST calling the guard: puts back the chained function, if any
-- (and still there), or removes the setting, then NOTIFY pgrst. Leaves a hook
-- that is not the guard as it is, and returns the status (idempotent: a
-- second call after the chained function was put back changes nothing).
-- The guard set for every database (ALTER ROLE authenticator SET, not what
-- install writes) is refused, changing nothing: resetting it would change
-- other databases, and resetting only this database's would leave it called.
-- Callers: the owner (service_role, as above). Errors: 55000 the guard is set
-- for every database; 42501 not allowed to alter authenticator.
create or replace function pgshield.uninstall_request_guard() returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hook text;
  v_chained text;
begin
  if not exists (select 1 from pg_roles r
                  where r.rolname = current_user and (r.rolsuper or r.rolcreaterole)) then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run uninstall_request_guard() as the project owner (postgres on Supabase)';
  end if;
  v_hook := pgshield.guard_configured_hook();
  if v_hook is distinct from 'pgshield.request_guard' then
    return pgshield.request_guard_status();
  end if;
  if exists (select 1 from pg_db_role_setting s cross join lateral unnest(s.setconfig) c(setting)
              where s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
                and s.setdatabase = 0 and c.setting = 'pgrst.db_pre_request=pgshield.request_guard') then
    raise exception using errcode = '55000',
      message = 'the guard is set for every database (alter role authenticator set pgrst.db_pre_request), not only this one',
      hint = 'reset it where it was set: alter role authenticator reset pgrst.db_pre_request; notify pgrst, ''reload config''';
  end if;
  select o.chained_function into v_chained from pgshield.guard_options o where o.id;
  if to_regprocedure(v_chained || '()') is null then
    v_chained := null;  -- dropped since it was chained: PostgREST would fail calling it
  end if;
  -- A chained hook that the db-pre-config function sets is left to it: the
  -- setting is removed, not written (it would override that function).
  if v_chained is not null then
    begin
      if pgshield.guard_preconfigured_hook() = v_chained then
        v_chained := null;
      end if;
    exception when sqlstate '55000' then
      null;  -- it cannot be run now: put the hook back as the setting
    end;
  end if;
  begin
    if v_chained is null then
      execute format('alter role authenticator in database %I reset pgrst.db_pre_request', current_database());
    else
      execute format('alter role authenticator in database %I set pgrst.db_pre_request = %L',
                     current_database(), v_chained);
    end if;
  exception when insufficient_privilege then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run uninstall_request_guard() as the project owner (postgres on Supabase)';
  end;
  perform pgshield.guard_set_chained(null);
  perform pg_notify('pgrst', 'reload config');
  return pgshield.request_guard_status();
end
$$;

revoke all on function pgshield.uninstall_request_guard() from public, anon, authenticated, service_role;
grant execute on function pgshield.uninstall_request_guard() to service_role;
