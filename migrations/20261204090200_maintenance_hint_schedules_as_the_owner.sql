-- maintenance: the statement a 55000 hint gives for a scheduler in another
-- database schedules the job as the pack's owner, not as the superuser who
-- runs it.
-- schedule_maintenance's hint named no user, so pg_cron recorded the job as
-- the superuser running the statement, and every run called
-- pgshield.run_maintenance_step as that superuser: the pack's owner, who may
-- replace that function, could so run any SQL as a superuser. The statement
-- now passes username => the pack's owner. unschedule_maintenance's hint
-- removes the job by id (cron.unschedule(name) only finds the caller's own
-- jobs). A job scheduled from the earlier hint still runs as the superuser:
-- docs/maintenance.md says how to find and replace it.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Creates or replaces (by job name) the pg_cron job that runs
-- maintenance_job_command() (cleanup committed in steps) in this database on p_schedule (cron
-- syntax; '[1-59] seconds' needs pg_cron 1.5+). The job runs as the pack's
-- owner. When pg_cron runs in another database, the 55000 error's hint holds
-- the exact cron.schedule_in_database(...) statement to run there as a
-- superuser; it names the pack's owner as the job's user (username =>):
-- without it pg_cron would run the job as that superuser, calling functions
-- the owner can replace.
-- Returns {"job_name", "jobid", "schedule", "command", "database"}.
-- Callers: the owner, service_role. Errors: 22023 bad schedule; 55000 pg_cron
-- missing or elsewhere; 42501 others, or the owner may not use schema cron.
create or replace function pgshield.schedule_maintenance(p_schedule text default '* * * * *')
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := pgshield.maintenance_job_name();
  v_command text := pgshield.maintenance_job_command();
  v_jobid bigint;
begin
  perform pgshield.maintenance_check_caller();
  if p_schedule is null
     or p_schedule !~ '^([0-9*/,-]+( [0-9*/,a-zA-Z-]+){4}|@(yearly|annually|monthly|weekly|daily|hourly|reboot)|[1-5]?[0-9] seconds?)$' then
    raise exception using errcode = '22023',
      message = 'p_schedule must be a cron schedule (5 fields), an @daily-style name or ''N seconds''',
      hint = 'e.g. ''* * * * *'' (every minute), ''*/5 * * * *'', ''30 seconds'' (pg_cron 1.5+)';
  end if;
  perform pgshield.maintenance_require_cron(format('select cron.schedule_in_database(%L, %L, %L, %L, username => %L);',
    v_name, p_schedule, v_command, current_database(), current_user));
  execute format('select %I.schedule($1, $2, $3)', 'cron') into v_jobid using v_name, p_schedule, v_command;
  return jsonb_build_object('job_name', v_name, 'jobid', v_jobid, 'schedule', p_schedule,
                            'command', v_command, 'database', current_database());
end
$$;

revoke all on function pgshield.schedule_maintenance(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.schedule_maintenance(text) to service_role;

-- Removes this database's maintenance job; true when there was one.
-- Callers: the owner, service_role. Errors: 55000 pg_cron missing or elsewhere
-- (the hint holds the statement to run there as a superuser: by job id, since
-- cron.unschedule(name) only finds the caller's own jobs and the job is the
-- owner's); 42501 others, or the owner may not use schema cron.
create or replace function pgshield.unschedule_maintenance() returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := pgshield.maintenance_job_name();
  v_jobid bigint;
begin
  perform pgshield.maintenance_check_caller();
  perform pgshield.maintenance_require_cron(format(
    'select cron.unschedule(j.jobid) from cron.job j where j.jobname = %L and j.database = %L;',
    v_name, current_database()));
  execute format('select j.jobid from %I.job j where j.jobname = $1', 'cron') into v_jobid using v_name;
  if v_jobid is null then
    return false;
  end if;
  execute format('select %I.unschedule($1)', 'cron') using v_jobid;
  return true;
end
$$;

revoke all on function pgshield.unschedule_maintenance() from public, anon, authenticated, service_role;
grant execute on function pgshield.unschedule_maintenance() to service_role;
