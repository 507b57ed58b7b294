-- rate limit: recording a usage of 0 answers instead of failing.
-- The documented way to count AI tokens checks an estimate, then records
-- real - estimated; when the estimate was exact that is 0, and
-- record_rate_limit_usage and record_rate_limit_key_usage refused it with
-- 22023. An amount of 0 now records nothing, writes nothing, and returns what
-- a request of cost 1 would get now, as any record does; null is still 22023.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Records usage after the fact on every window of the subject's tier: a
-- positive p_amount is added even past the limits (so the next request is
-- denied), a negative one is refunded (never below zero), 0 (an estimate
-- that was exact) records nothing and writes nothing. Returns what a
-- request of cost 1 would get now.
-- Callers: service_role.
-- Errors: 22023 unknown policy, bad subject, p_amount null.
create or replace function public.record_rate_limit_usage(
  p_policy text,
  p_subject text,
  p_amount integer
) returns public.rate_limit_check_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_policy pgshield.rate_limit_policies := pgshield.rate_limit_policy(p_policy);
begin
  if p_subject is null or length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if p_amount is null then
    raise exception using errcode = '22023', message = 'p_amount must be an integer',
      hint = 'positive records usage, negative refunds it, 0 records nothing';
  end if;
  if p_amount = 0 then
    return pgshield.rate_limit_decide(v_policy, p_subject, 1, 'peek');
  end if;
  return pgshield.rate_limit_decide(v_policy, p_subject, p_amount, 'usage');
end
$$;

revoke all on function public.record_rate_limit_usage(text, text, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.record_rate_limit_usage(text, text, integer) to service_role;

-- Records cost on a key after the fact (p_amount > 0), even past the limit so
-- that the next request is denied, or refunds it (p_amount < 0, never below
-- zero); 0 (an estimate that was exact) records nothing and writes nothing.
-- Returns what a request of cost 1 would get now (not consumed).
-- Callers: service_role.
-- Errors: 22023 bad key, limit, window, algorithm, or p_amount null.
create or replace function public.record_rate_limit_key_usage(
  p_key text,
  p_limit integer,
  p_window_seconds integer,
  p_amount integer,
  p_algorithm text default 'fixed_window'
) returns public.rate_limit_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now_us bigint;
  v_row record;
  v_e pgshield.rate_limit_eval;
begin
  perform pgshield.rate_limit_check_args(p_key, p_limit, p_window_seconds, p_algorithm);
  if p_amount is null then
    raise exception using errcode = '22023', message = 'p_amount must be an integer',
      hint = 'positive records usage, negative refunds it, 0 records nothing';
  end if;
  if p_amount = 0 then
    return public.peek_rate_limit(p_key, p_limit, p_window_seconds, 1, p_algorithm);
  end if;
  v_now_us := pgshield.rate_limit_now_us();
  -- Lock the row (or create it empty), then apply, at the time the row was
  -- got (the lock may have been waited for): never in a window that ended
  -- meanwhile, never back in time.
  insert into pgshield.rate_limit_state as s
    (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
  values (p_key, '', p_window_seconds, p_algorithm, p_limit, null, 0, 0, null, pgshield.now())
  on conflict (key, policy, window_seconds) do update set count = s.count where false;
  v_now_us := greatest(v_now_us, pgshield.rate_limit_now_us());
  select s.algorithm, s.window_start, s.count, s.prev_count, s.tat into v_row
    from pgshield.rate_limit_state s
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  v_e := pgshield.rate_limit_evaluate(p_algorithm, p_limit, p_window_seconds, p_amount, v_now_us,
    v_row.algorithm, v_row.window_start, v_row.count, v_row.prev_count, v_row.tat, true);
  update pgshield.rate_limit_state s
     set algorithm = p_algorithm, limit_value = p_limit, window_start = v_e.window_start,
         count = v_e.count, prev_count = v_e.prev_count, tat = v_e.tat, expires_at = v_e.reset_at
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  v_e := pgshield.rate_limit_evaluate(p_algorithm, p_limit, p_window_seconds, 1, v_now_us,
    p_algorithm, v_e.window_start, v_e.count, v_e.prev_count, v_e.tat, false);
  return pgshield.rate_limit_result_of(v_e, v_e.fits, p_key, p_limit, p_window_seconds, 1, p_algorithm);
end
$$;

revoke all on function public.record_rate_limit_key_usage(text, integer, integer, integer, text)
  from public, anon, authenticated, service_role;
grant execute on function public.record_rate_limit_key_usage(text, integer, integer, integer, text)
  to service_role;
