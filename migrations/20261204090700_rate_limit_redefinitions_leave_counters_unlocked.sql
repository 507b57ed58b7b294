-- rate limit: a redefinition no longer locks the policy's counters, and a
-- direct key's recorded usage goes into the window current when the row was
-- got.
-- define_rate_limit_policy ran ALTER SEQUENCE ... SET UNLOGGED on the
-- policy's two counters on every call, which takes an ACCESS EXCLUSIVE lock
-- even when nothing changes: a redefinition waited for every open
-- transaction that had checked the policy, and every new check of it (the
-- Data API guard's too) queued behind it. The persistence is now set only
-- when it differs.
-- record_rate_limit_key_usage read the clock before it waited for the key's
-- row and applied the usage at that time: a record that waited across a
-- window's end went into the ended window (a fixed window lost it). It now
-- reads the clock again once it holds the row, as record_rate_limit_usage
-- does.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Sets the persistence of one counter sequence (PostgreSQL 15 and later can
-- make sequences unlogged; older servers keep them logged), only when it
-- differs: ALTER SEQUENCE takes an ACCESS EXCLUSIVE lock even when it changes
-- nothing, and every decision of the policy holds a lock on its counters
-- until its transaction ends (a redefinition would queue behind them and
-- every new decision behind it).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_set_sequence_storage(p_seq regclass, p_mode text)
returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if current_setting('server_version_num')::integer >= 150000
     and (select c.relpersistence from pg_class c where c.oid = p_seq)
         is distinct from (case p_mode when 'unlogged' then 'u' else 'p' end) then
    execute format('alter sequence %s set %s', p_seq, case p_mode when 'unlogged' then 'unlogged' else 'logged' end);
  end if;
end
$$;

revoke all on function pgshield.rate_limit_set_sequence_storage(regclass, text)
  from public, anon, authenticated, service_role;

-- Records cost on a key after the fact (p_amount > 0), even past the limit so
-- that the next request is denied, or refunds it (p_amount < 0, never below
-- zero). Returns what a request of cost 1 would get now (not consumed).
-- Callers: service_role.
-- Errors: 22023 bad key, limit, window, algorithm, or p_amount null or 0.
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
  if p_amount is null or p_amount = 0 then
    raise exception using errcode = '22023', message = 'p_amount must be a non-zero integer',
      hint = 'positive records usage, negative refunds it';
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
