-- maintenance: the rate limit state gauge, and the rate_limit task's tables,
-- count the policy state table too (pgshield.rate_limit_policy_state, 20261202070000).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The pack's state in the Prometheus text exposition format (version 0.0.4):
--   pgshield_rate_limit_decisions_total{policy,outcome}   counter ('' = direct keys)
--   pgshield_rate_limit_state_rows{state="live"|"expired"} gauge
--   pgshield_breaker_state{breaker,state}                  gauge (1 for the current state)
--   pgshield_breaker_transitions_total{breaker}            counter (state changes)
--   pgshield_teams, pgshield_team_members                  gauge
--   pgshield_maintenance_runs_total, pgshield_maintenance_run_duration_seconds (summary),
--   pgshield_maintenance_last_run_timestamp_seconds, pgshield_maintenance_deleted_rows_total{task},
--   pgshield_maintenance_task_errors_total{task}, pgshield_maintenance_backlog{task}
-- Families of modules that are not installed are left out. Reads other
-- modules' state (never writes it) through dynamic SQL guarded by to_regclass.
-- Callers: the owner, service_role. Errors: 42501 others.
create or replace function pgshield.metrics() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_out text[] := '{}'::text[];
  v_lines text[];
  v_now timestamptz := pgshield.now();
  v_live bigint;
  v_expired bigint;
  v_count bigint;
begin
  perform pgshield.maintenance_check_caller();

  if to_regclass('pgshield.rate_limit_counters') is not null then
    execute $sql$
      select coalesce(array_agg(l order by l), '{}')
        from (select format('pgshield_rate_limit_decisions_total{policy=%s,outcome="allowed"} %s',
                            pgshield.metrics_label(c.policy), c.allowed) as l
                from pgshield.rate_limit_counters c
              union all
              select format('pgshield_rate_limit_decisions_total{policy=%s,outcome="denied"} %s',
                            pgshield.metrics_label(c.policy), c.denied)
                from pgshield.rate_limit_counters c) x
    $sql$ into v_lines;
    v_out := v_out
      || '# HELP pgshield_rate_limit_decisions_total Rate limit decisions per policy (policy "" = direct keys) and outcome.'::text
      || '# TYPE pgshield_rate_limit_decisions_total counter'::text
      || v_lines;
  end if;
  if to_regclass('pgshield.rate_limit_state') is not null then
    execute 'select count(*) filter (where s.expires_at > $1), count(*) filter (where s.expires_at <= $1)
               from (select x.expires_at from pgshield.rate_limit_state x
                     union all
                     select y.expires_at from pgshield.rate_limit_policy_state y) s'
      into v_live, v_expired using v_now;
    v_out := v_out
      || '# HELP pgshield_rate_limit_state_rows Rows of rate limit state: live, or expired and waiting for cleanup.'::text
      || '# TYPE pgshield_rate_limit_state_rows gauge'::text
      || format('pgshield_rate_limit_state_rows{state="live"} %s', v_live)
      || format('pgshield_rate_limit_state_rows{state="expired"} %s', v_expired);
  end if;

  if to_regclass('pgshield.breakers') is not null then
    execute $sql$
      select coalesce(array_agg(format('pgshield_breaker_state{breaker=%s,state="%s"} %s',
                                       pgshield.metrics_label(b.name), s.state,
                                       case when b.state = s.state then 1 else 0 end)
                                order by b.name, s.n), '{}')
        from pgshield.breakers b
       cross join unnest(array['closed', 'open', 'half_open', 'forced_open', 'disabled'])
             with ordinality s(state, n)
    $sql$ into v_lines;
    v_out := v_out
      || '# HELP pgshield_breaker_state Circuit breaker state: 1 for the state each breaker is in.'::text
      || '# TYPE pgshield_breaker_state gauge'::text || v_lines;
    execute $sql$
      select coalesce(array_agg(format('pgshield_breaker_transitions_total{breaker=%s} %s',
                                       pgshield.metrics_label(b.name), b.generation - 1) order by b.name), '{}')
        from pgshield.breakers b
    $sql$ into v_lines;
    v_out := v_out
      || '# HELP pgshield_breaker_transitions_total State changes of each breaker since it was created.'::text
      || '# TYPE pgshield_breaker_transitions_total counter'::text || v_lines;
  end if;

  if to_regclass('pgshield.teams') is not null then
    execute 'select count(*) from pgshield.teams' into v_count;
    v_out := v_out
      || '# HELP pgshield_teams Teams that exist.'::text
      || '# TYPE pgshield_teams gauge'::text
      || format('pgshield_teams %s', v_count);
  end if;
  if to_regclass('pgshield.team_members') is not null then
    execute 'select count(*) from pgshield.team_members' into v_count;
    v_out := v_out
      || '# HELP pgshield_team_members Memberships of all teams.'::text
      || '# TYPE pgshield_team_members gauge'::text
      || format('pgshield_team_members %s', v_count);
  end if;

  select coalesce(array_agg(l order by o, l), '{}') into v_lines
    from (select 1 as o, '# HELP pgshield_maintenance_runs_total Maintenance runs.' as l
          union all select 2, '# TYPE pgshield_maintenance_runs_total counter'
          union all select 3, format('pgshield_maintenance_runs_total %s', s.runs) from pgshield.maintenance_totals s
          union all select 4, '# HELP pgshield_maintenance_run_duration_seconds Time spent in maintenance runs.'
          union all select 5, '# TYPE pgshield_maintenance_run_duration_seconds summary'
          union all select 6, format('pgshield_maintenance_run_duration_seconds_sum %s', round(s.seconds::numeric, 6))
                      from pgshield.maintenance_totals s
          union all select 7, format('pgshield_maintenance_run_duration_seconds_count %s', s.runs)
                      from pgshield.maintenance_totals s
          union all select 8, '# HELP pgshield_maintenance_last_run_timestamp_seconds When the last maintenance run started (Unix time; 0: never).'
          union all select 9, '# TYPE pgshield_maintenance_last_run_timestamp_seconds gauge'
          union all select 10, format('pgshield_maintenance_last_run_timestamp_seconds %s',
                                      coalesce(round(extract(epoch from s.last_started_at), 3), 0))
                      from pgshield.maintenance_totals s
          union all select 11, '# HELP pgshield_maintenance_deleted_rows_total Rows each maintenance task deleted.'
          union all select 12, '# TYPE pgshield_maintenance_deleted_rows_total counter'
          union all select 13, format('pgshield_maintenance_deleted_rows_total{task=%s} %s', pgshield.metrics_label(t.task), t.deleted)
                      from pgshield.maintenance_tasks t
          union all select 14, '# HELP pgshield_maintenance_task_errors_total Maintenance task runs that failed.'
          union all select 15, '# TYPE pgshield_maintenance_task_errors_total counter'
          union all select 16, format('pgshield_maintenance_task_errors_total{task=%s} %s', pgshield.metrics_label(t.task), t.errors)
                      from pgshield.maintenance_tasks t
          union all select 17, '# HELP pgshield_maintenance_backlog 1 when the task''s last run stopped at the time budget with rows left.'
          union all select 18, '# TYPE pgshield_maintenance_backlog gauge'
          union all select 19, format('pgshield_maintenance_backlog{task=%s} %s', pgshield.metrics_label(t.task),
                                      case when t.last_status = 'more' then 1 else 0 end)
                      from pgshield.maintenance_tasks t) x;
  v_out := v_out || v_lines;
  return array_to_string(v_out, E'\n') || E'\n';
end
$$;

revoke all on function pgshield.metrics() from public, anon, authenticated, service_role;
grant execute on function pgshield.metrics() to service_role;

-- The maintenance task cleans both tables.
update pgshield.maintenance_tasks t
   set tables = '{pgshield.rate_limit_state,pgshield.rate_limit_policy_state}'
 where t.task = 'rate_limit' and t.tables = '{pgshield.rate_limit_state}';
