-- Intervals of mixed signs are refused where a caller passes a retention or
-- an expiry.
-- pgshield.time_moved (20261204100000) tested a retention on today's clock:
-- '1 month -29 days' is 2 days back from a day in January, and passed, but 1
-- day ahead from one in March, where teams_cleanup then deleted audit rows
-- written that instant and a maintenance task's cleanup failed every run.
-- An interval whose months and its days and time have opposite signs now
-- gives no time (null), so every caller of time_moved refuses it with 22023. Stored
-- values of mixed signs are set to the default (180 days for the audit,
-- 7 days for the maintenance history, 1 minute for rate limit state).

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

update pgshield.teams_settings s
   set audit_retention = interval '180 days', updated_at = now()
 where s.audit_retention is not null
   and pgshield.time_moved(pgshield.now(), s.audit_retention, true) is null;

update pgshield.maintenance_tasks t
   set retention = case t.task when 'rate_limit' then interval '1 minute' else interval '7 days' end
 where t.retention is not null
   and pgshield.time_moved(pgshield.now(), t.retention, true) is null;
