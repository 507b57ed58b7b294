-- Intervals a caller passes are tested on the clock, so one past the
-- timestamp range, or one of mixed signs, is refused with 22023.
-- A team audit retention or a maintenance task retention over about 4,700
-- years (someone meaning "keep forever") was stored, then made every cleanup
-- run fail with 22008 "timestamp out of range" (teams_cleanup's rollback kept
-- used and expired invitations too), and run_maintenance reported the task
-- failed on every run; create_team_invitation answered a huge p_expires_in
-- with 22008 instead of its own 22023. Retentions are now 1000 years at most
-- (the audit one at least 1 day, as before), tested as the time they give
-- (comparing intervals counts a month as 30 days, so '300000 years
-- -107999970 days' compares as 30 days and overflows). An interval whose
-- months and whose days and time have opposite signs is refused as well:
-- '1 month -29 days' is 2 days back from a day in January but 1 day ahead
-- from one in March, where teams_cleanup would delete audit rows written
-- that instant. Stored retentions of mixed signs go back to the default
-- (180 days for the audit, 7 days for the maintenance history, 1 minute for
-- rate limit state); those past the bound are set to it.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

-- Creates an invitation and returns it with its token (shown only here).
-- Callers: through teams_call (admin; role within the caller's own).
-- Errors: 22023 bad role, email or expiry; PT404; 42501; PT409 the team's
-- open invitations limit (set_teams_limits).
create or replace function pgshield.team_create_invitation(
  p_team_id uuid, p_role text, p_email text, p_expires_in interval, p_permissions text[]
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_role text := pgshield.team_role(coalesce(p_role, 'member'), 'p_role');
  v_extra text[] := pgshield.team_permission_list(p_permissions, 'p_permissions');
  v_email text := pgshield.team_email(p_email, 'p_email');
  v_expires_in interval := coalesce(p_expires_in, interval '7 days');
  -- 244 random bits from the server's strong random source (two v4 uuids).
  v_token text := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
  v_guard record;
  v_inv pgshield.team_invitations;
  v_now timestamptz := pgshield.now();
  v_max integer;
begin
  -- On the clock, not as intervals: comparing intervals counts a month as 30
  -- days and a year as 360, so '100 years -35910 days' compared as 90 days
  -- (and one past the timestamp range is refused here, not with 22008).
  if pgshield.time_moved(v_now, v_expires_in, false)
       between v_now + interval '1 minute' and v_now + interval '90 days' is not true then
    raise exception using errcode = '22023', message = 'p_expires_in must be between 1 minute and 90 days';
  end if;
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor, 'admin', true);
  -- The time once the team is locked (the lock may have been waited for): the
  -- open invitations are counted, and this one dated, then, never before.
  v_now := greatest(v_now, pgshield.now());
  perform pgshield.team_check_grant(v_guard.o_slug, v_guard.o_rank, v_guard.o_permissions, v_role, v_extra, null);
  if v_actor is not null then
    -- Counted under the team's row lock (team_guard), so exact.
    v_max := coalesce((select s.max_open_invitations_per_team from pgshield.teams_settings s where s.id), 1000);
    if (select count(*) from (select 1 from pgshield.team_invitations i
                               where i.team_id = p_team_id and i.accepted_at is null
                                 and i.revoked_at is null and i.expires_at > v_now
                               limit v_max) x) >= v_max then
      raise exception using errcode = 'PT409',
        message = format('team %L has %s open invitations, the most a team may', v_guard.o_slug, v_max),
        hint = 'revoke some or let them expire; the project sets the limit with pgshield.set_teams_limits()';
    end if;
  end if;
  insert into pgshield.team_invitations (team_id, token_hash, role, extra_permissions, email, invited_by,
                                         created_at, expires_at)
  values (p_team_id, sha256(convert_to(v_token, 'UTF8')), v_role, v_extra, v_email, v_actor,
          v_now, v_now + v_expires_in)
  returning * into v_inv;
  perform pgshield.team_audit_write(p_team_id, 'create_invitation', 'ok', null, null, null,
    jsonb_build_object('invitation_id', v_inv.id, 'role', v_role, 'email', v_email, 'expires_at', v_inv.expires_at));
  return pgshield.team_invitation_json(v_inv) || jsonb_build_object('token', v_token);
end
$$;

revoke all on function pgshield.team_create_invitation(uuid, text, text, interval, text[])
  from public, anon, authenticated, service_role;

-- Sets how long teams_cleanup keeps audit rows (1 day to 1000 years, on
-- the clock); returns it.
-- Callers: service_role, the owner. Errors: 22023; 42501 others.
create or replace function pgshield.set_teams_audit_retention(p_retention interval) returns interval
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set the audit retention';
  end if;
  if pgshield.time_moved(v_now, p_retention, true)
       between v_now - interval '1000 years' and v_now - interval '1 day' is not true then
    raise exception using errcode = '22023', message = 'p_retention must be between 1 day and 1000 years';
  end if;
  insert into pgshield.teams_settings as s (id, audit_retention, updated_at)
  values (true, p_retention, now())
  on conflict (id) do update set audit_retention = excluded.audit_retention, updated_at = now();
  return p_retention;
end
$$;

revoke all on function pgshield.set_teams_audit_retention(interval) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_teams_audit_retention(interval) to service_role;

-- This module's own cleanup: deletes up to p_batch_size rows of the run
-- history and of cron.job_run_details for the pack's jobs that are older than
-- p_retention, and returns how many it deleted.
-- Callers: run_maintenance (the owner), service_role. Errors: 22023 bad batch
-- size or retention; 42501 others.
create or replace function pgshield.maintenance_cleanup(p_batch_size integer, p_retention interval)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_before timestamptz;
  v_count integer;
  v_cron integer := 0;
  v_deletes boolean := false;
begin
  perform pgshield.maintenance_check_caller();
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  v_before := pgshield.time_moved(v_now, p_retention, true);
  if (v_before >= v_now - interval '1000 years' and v_before < v_now) is not true then
    raise exception using errcode = '22023', message = 'p_retention must be a positive interval of at most 1000 years';
  end if;
  delete from pgshield.maintenance_runs r
   using (select x.id from pgshield.maintenance_runs x
           where x.started_at < v_before order by x.id limit p_batch_size for update skip locked) d
   where r.id = d.id;
  get diagnostics v_count = row_count;
  -- Only where the owner may delete from pg_cron's run history (a
  -- non-superuser owner may not use schema cron until granted it; the
  -- table's name is looked up only then, since looking it up needs USAGE).
  if v_count < p_batch_size and coalesce((pgshield.maintenance_cron() ->> 'usage')::boolean, false) then
    v_deletes := case when to_regclass('cron.job_run_details') is null then false
                      else has_table_privilege('cron.job_run_details', 'delete') end;
  end if;
  if v_deletes then
    -- format(): the cron schema may not exist, so the statement is never checked ahead.
    execute format($sql$
      delete from %1$I.job_run_details r
       where r.runid in (select x.runid from %1$I.job_run_details x
                          where x.jobid in (select j.jobid from %1$I.job j where j.jobname = $3)
                            and x.end_time < $1
                          order by x.runid limit $2)
    $sql$, 'cron') using v_before, p_batch_size - v_count, pgshield.maintenance_job_name();
    get diagnostics v_cron = row_count;
  end if;
  return v_count + v_cron;
end
$$;

revoke all on function pgshield.maintenance_cleanup(integer, interval) from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_cleanup(integer, interval) to service_role;

-- Changes one task's settings (null keeps a setting) and returns the task.
-- Callers: the owner, service_role. Errors: 22023 unknown task or bad value; 42501 others.
create or replace function pgshield.set_maintenance_task(
  p_task text,
  p_batch_size integer default null,
  p_retention interval default null,
  p_enabled boolean default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgshield.maintenance_tasks;
  v_now timestamptz := pgshield.now();
  v_before timestamptz;
begin
  perform pgshield.maintenance_check_caller();
  if p_batch_size not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_batch_size must be between 1 and 1000000';
  end if;
  v_before := pgshield.time_moved(v_now, p_retention, true);
  if p_retention is not null and (v_before >= v_now - interval '1000 years' and v_before < v_now) is not true then
    raise exception using errcode = '22023', message = 'p_retention must be a positive interval of at most 1000 years';
  end if;
  update pgshield.maintenance_tasks t
     set batch_size = coalesce(p_batch_size, t.batch_size),
         retention = coalesce(p_retention, t.retention),
         enabled = coalesce(p_enabled, t.enabled)
   where t.task = p_task
  returning * into v_row;
  if v_row.task is null then
    raise exception using errcode = '22023', message = format('no maintenance task %L', p_task),
      hint = 'see pgshield.maintenance_status() -> tasks';
  end if;
  return jsonb_build_object('task', v_row.task, 'module', v_row.module, 'cleanup', v_row.cleanup,
                            'batch_size', v_row.batch_size, 'retention', v_row.retention,
                            'enabled', v_row.enabled);
end
$$;

revoke all on function pgshield.set_maintenance_task(text, integer, interval, boolean)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.set_maintenance_task(text, integer, interval, boolean) to service_role;

-- Deletes up to p_batch_size rows whose state expired at least p_expired_for
-- ago (expired state is equivalent to no row), from the direct-key state and
-- then the policy state, skipping rows that concurrent decisions hold locked,
-- and returns how many it deleted. Call it in a loop until it returns less
-- than the batch. In each table a batch goes on from the page where this
-- session's previous batch stopped (the custom settings
-- pgshield.rate_limit_cleanup_block and pgshield.rate_limit_cleanup_policy_block,
-- hints only) and goes round the whole table before it reports less than a
-- batch, so no batch reads again the pages that earlier batches emptied.
-- p_expired_for (the maintenance task's retention) leaves alone keys whose
-- window has only just ended: such a key is often decided on again at once,
-- and that decision would wait for the commit of the cleanup that deleted
-- its row.
-- Callers: the owner, service_role. Errors: 22023 bad batch size or interval.
create or replace function pgshield.cleanup_expired_rate_limits(p_batch_size integer, p_expired_for interval)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_before timestamptz;
  v_from bigint;
  v_lo tid;
  v_hi tid;
  v_count integer := 0;
  v_n integer;
  v_block bigint;
  v_last bigint;
  v_table text;
  v_hint text;
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  v_before := pgshield.time_moved(v_now, p_expired_for, true);
  if v_before between v_now - interval '1000 years' and v_now is not true then
    raise exception using errcode = '22023', message = 'p_expired_for must be an interval of zero to 1000 years';
  end if;
  for v_table, v_hint in
    values ('pgshield.rate_limit_state', 'pgshield.rate_limit_cleanup_block'),
           ('pgshield.rate_limit_policy_state', 'pgshield.rate_limit_cleanup_policy_block')
  loop
    exit when v_count >= p_batch_size;
    v_from := least(coalesce(substring(current_setting(v_hint, true) from '^[0-9]{1,10}$'), '0')::bigint,
                    4294967294);
    v_lo := format('(%s,0)', v_from)::tid;
    v_hi := '(4294967295,65535)'::tid;
    v_last := null;
    -- From the hint to the end of the table (a TID range scan), then from the
    -- start up to the hint; deleted by ctid, which the row lock keeps stable.
    for v_pass in 1..2 loop
      exit when v_count >= p_batch_size or v_hi = '(0,0)'::tid;
      execute format($q$
        with d as (
          delete from %1$s s
           where s.ctid = any (array(select x.ctid from %1$s x
                                      where x.ctid >= $1 and x.ctid < $2 and x.expires_at <= $3
                                      limit $4
                                        for update skip locked))
             and s.expires_at <= $3
          returning (s.ctid::text::point)[0]::bigint as block)
        select count(*)::integer, max(d.block) from d$q$, v_table)
        into v_n, v_block using v_lo, v_hi, v_before, p_batch_size - v_count;
      v_count := v_count + v_n;
      v_last := coalesce(v_block, v_last);
      v_hi := v_lo;
      v_lo := '(0,0)'::tid;
    end loop;
    perform set_config(v_hint, coalesce(v_last, 0)::text, false);
  end loop;
  return v_count;
end
$$;

revoke all on function pgshield.cleanup_expired_rate_limits(integer, interval)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.cleanup_expired_rate_limits(integer, interval) to service_role;

-- Stored retentions of mixed signs go back to the default; then those past
-- the bound are set to it.
update pgshield.teams_settings s
   set audit_retention = interval '180 days', updated_at = now()
 where (extract(year from s.audit_retention) * 12 + extract(month from s.audit_retention))
       * (extract(day from s.audit_retention) * 86400 + extract(hour from s.audit_retention) * 3600
          + extract(minute from s.audit_retention) * 60 + extract(second from s.audit_retention)) < 0;

update pgshield.maintenance_tasks t
   set retention = case t.task when 'rate_limit' then interval '1 minute' else interval '7 days' end
 where (extract(year from t.retention) * 12 + extract(month from t.retention))
       * (extract(day from t.retention) * 86400 + extract(hour from t.retention) * 3600
          + extract(minute from t.retention) * 60 + extract(second from t.retention)) < 0;

update pgshield.teams_settings s
   set audit_retention = interval '1000 years', updated_at = now()
 where s.audit_retention is not null
   and (pgshield.time_moved(pgshield.now(), s.audit_retention, true)
          >= pgshield.now() - interval '1000 years') is not true;

update pgshield.maintenance_tasks t
   set retention = interval '1000 years'
 where t.retention is not null
   and (pgshield.time_moved(pgshield.now(), t.retention, true)
          >= pgshield.now() - interval '1000 years') is not true;
