-- breaker: a healthy path that never waits and, for a breaker that trips on
-- consecutive failures only, never writes.
--   acquire_breaker in the closed state: one indexed read, no lock, no write.
--   release_breaker of a success in the closed state: writes nothing for a
--     breaker without a rate rule (unless it has a streak of failures to
--     forget); a breaker with a rate rule counts it in the calling backend's
--     own bucket row (shard = backend pid), so no two callers write one row.
--   configure_breaker: adding a rate rule to a breaker that had none starts
--     its window afresh (its successes were not counted).
--   breaker_status view: calls and failure_rate are null for a breaker
--     without a rate rule.
-- Signatures are unchanged.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

comment on table pgshield.breaker_buckets is
  'Calls, failures and slow calls per breaker, generation, second and backend (successes only with a rate rule).';

-- Counts one outcome in this backend's own bucket row of the current second
-- (shard = the backend's process id): two concurrent callers never write the
-- same row, so counting never waits on a lock. An update first, since the row
-- of this second usually exists; the insert only for the first outcome of a
-- second.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.breaker_count(
  p_name text, p_generation bigint, p_now timestamptz, p_failure boolean, p_slow boolean
) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_second timestamptz := date_trunc('second', p_now);
  v_failures integer := case when p_failure then 1 else 0 end;
  v_slow integer := case when p_slow then 1 else 0 end;
begin
  update pgshield.breaker_buckets k
     set calls = k.calls + 1, failures = k.failures + v_failures, slow = k.slow + v_slow
   where k.name = p_name and k.generation = p_generation and k.second = v_second
     and k.shard = pg_backend_pid();
  if not found then
    insert into pgshield.breaker_buckets as k (name, generation, second, shard, calls, failures, slow)
    values (p_name, p_generation, v_second, pg_backend_pid(), 1, v_failures, v_slow)
    on conflict (name, generation, second, shard) do update
       set calls = k.calls + 1, failures = k.failures + excluded.failures, slow = k.slow + excluded.slow;
  end if;
end
$$;

revoke all on function pgshield.breaker_count(text, bigint, timestamptz, boolean, boolean)
  from public, anon, authenticated, service_role;

-- May a call go through breaker p_name now? Closed and disabled: yes, with no
-- row lock (a permit of the current generation). Open: no, until open_until;
-- the first call after it moves the breaker to half_open (under the row
-- lock, with the clock read after the lock) and competes for a trial slot.
-- Half-open: a lease on one of half_open_permits slots for lease_ms, or no.
-- Forced open: no (retry_after_ms -1). An unknown name is created with the
-- defaults when the installation auto-creates, else refused.
-- Callers: service_role.
-- Errors: 22023 bad name; 42501 other roles; PT404 unknown breaker (auto_create
-- off); PT409 too many breakers.
create or replace function public.acquire_breaker(p_name text) returns public.breaker_decision
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_role text := current_setting('role');
  v_state text;
  v_gen bigint;
  v_now timestamptz;
  v_res public.breaker_decision;
  v_active integer;
  v_expiry timestamptz;
begin
  -- service_role and this function's owner are let through without a catalog
  -- read (the same roles pgshield.caller_is_trusted() trusts); any other role
  -- is judged by breaker_check_caller().
  if v_role <> 'service_role' and (case v_role when 'none' then session_user else v_role end) <> current_user then
    perform pgshield.breaker_check_caller();
  end if;

  -- The healthy path: one indexed read, no lock, no write, no clock. A name
  -- found in the table is valid (the table checks it).
  select b.state, b.generation into v_state, v_gen from pgshield.breakers b where b.name = p_name;
  if v_state in ('closed', 'disabled') then
    return row(true, v_state, v_gen, v_gen * 4294967296, 0, p_name)::public.breaker_decision;
  end if;

  perform pgshield.breaker_check_name(p_name);
  v_b := pgshield.breaker_get(p_name, true);
  v_res.name := p_name;
  if v_b.state in ('closed', 'disabled') then
    -- Created just now (or changed since the read above).
    v_res.allowed := true;
    v_res.state := v_b.state;
    v_res.generation := v_b.generation;
    v_res.permit := v_b.generation * 4294967296;
    v_res.retry_after_ms := 0;
    return v_res;
  elsif v_b.state = 'forced_open' then
    v_res.allowed := false;
    v_res.state := v_b.state;
    v_res.generation := v_b.generation;
    v_res.retry_after_ms := -1;
    return v_res;
  elsif v_b.state = 'open' then
    v_now := pgshield.now();
    if v_now < v_b.open_until then
      v_res.allowed := false;
      v_res.state := 'open';
      v_res.generation := v_b.generation;
      v_res.retry_after_ms := pgshield.breaker_ms_until(v_b.open_until, v_now);
      return v_res;
    end if;
  end if;

  -- open past open_until, or half_open: decide under the row lock, judged by
  -- the newest state and a clock read after the lock (never older than the
  -- row's last change).
  select * into v_b from pgshield.breakers b where b.name = p_name for update;
  if not found then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name);
  end if;
  v_now := greatest(pgshield.now(), v_b.changed_at);
  if v_b.state = 'open' and v_now >= v_b.open_until then
    v_b := pgshield.breaker_transition(v_b, 'half_open', 'open period over', v_now);
  end if;
  v_res.state := v_b.state;
  v_res.generation := v_b.generation;
  if v_b.state <> 'half_open' then
    -- Someone changed the state while this call waited for the lock.
    v_res.allowed := v_b.state in ('closed', 'disabled');
    v_res.permit := case when v_res.allowed then v_b.generation * 4294967296 end;
    v_res.retry_after_ms := case v_b.state when 'forced_open' then -1
                                            when 'open' then pgshield.breaker_ms_until(v_b.open_until, v_now)
                                            else 0 end;
    return v_res;
  end if;

  delete from pgshield.breaker_leases l where l.name = p_name and l.expires_at <= v_now;
  select count(*), min(l.expires_at) into v_active, v_expiry
    from pgshield.breaker_leases l where l.name = p_name;
  if v_active >= v_b.half_open_permits then
    v_res.allowed := false;
    v_res.retry_after_ms := pgshield.breaker_ms_until(v_expiry, v_now);
    return v_res;
  end if;
  update pgshield.breakers b set leases_issued = b.leases_issued + 1
   where b.name = p_name
  returning b.leases_issued into v_b.leases_issued;
  insert into pgshield.breaker_leases (name, lease_no, generation, expires_at)
  values (p_name, v_b.leases_issued, v_b.generation, v_now + v_b.lease_ms * interval '1 millisecond');
  v_res.allowed := true;
  v_res.permit := v_b.generation * 4294967296 + v_b.leases_issued;
  v_res.retry_after_ms := 0;
  return v_res;
end
$$;

revoke all on function public.acquire_breaker(text) from public, anon, authenticated, service_role;
grant execute on function public.acquire_breaker(text) to service_role;

-- Reports the outcome of a call that acquire_breaker allowed: p_outcome
-- 'success', 'failure' or 'ignored' (not counted; a trial slot is given back),
-- p_duration_ms how long it took (null: unknown, never slow). An outcome from
-- an older generation, or of a trial lease that expired, changes nothing.
--   closed:    a failure (or a slow call) is counted in the window and may
--              trip the breaker open; a success resets the consecutive
--              failures, and is counted in the window when the breaker has a
--              rate rule (without one it writes nothing when there is no
--              streak to reset).
--   half_open: a failure (or a slow call) opens it again, with backoff;
--              success_threshold successes close it.
-- Callers: service_role.
-- Errors: 22023 bad name, permit, outcome or duration; 42501 other roles;
-- PT404 unknown breaker.
create or replace function public.release_breaker(
  p_name text,
  p_permit bigint,
  p_outcome text,
  p_duration_ms integer default null
) returns public.breaker_release_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_role text := current_setting('role');
  v_state text;
  v_current bigint;
  v_streak integer;
  v_slow_ms integer;
  v_rated boolean;
  v_gen bigint;
  v_lease bigint;
  v_now timestamptz;
  v_slow boolean;
  v_bad boolean;
  v_counted boolean;
  v_trip text;
  v_res public.breaker_release_result;
begin
  -- service_role and this function's owner are let through without a catalog
  -- read (as in acquire_breaker); any other role by breaker_check_caller().
  if v_role <> 'service_role' and (case v_role when 'none' then session_user else v_role end) <> current_user then
    perform pgshield.breaker_check_caller();
  end if;
  -- One indexed read of what the paths without the row lock need. A name
  -- found in the table is valid (the table checks it).
  select b.state, b.generation, b.consecutive_failures, b.slow_call_ms,
         b.failure_rate is not null or b.slow_call_rate is not null
    into v_state, v_current, v_streak, v_slow_ms, v_rated
    from pgshield.breakers b where b.name = p_name;

  -- The healthy path, first and in one test: a success of the current
  -- generation in the closed state, for a breaker without a rate rule (so it
  -- has no slow-call rule either) and no streak of failures to forget. It
  -- writes nothing at all.
  if v_state = 'closed' and p_permit = v_current * 4294967296 and p_outcome = 'success' and v_streak = 0
     and not v_rated and (p_duration_ms is null or p_duration_ms >= 0) then
    return row(v_state, v_current, false, true, p_name)::public.breaker_release_result;
  end if;

  if p_permit is null or p_permit < 4294967296 then
    raise exception using errcode = '22023', message = 'p_permit must be a permit that acquire_breaker returned';
  end if;
  if p_outcome is null or p_outcome not in ('success', 'failure', 'ignored') then
    raise exception using errcode = '22023', message = 'p_outcome must be success, failure or ignored',
      hint = format('got %L', left(p_outcome, 80));
  end if;
  if p_duration_ms < 0 then
    raise exception using errcode = '22023', message = 'p_duration_ms must be >= 0 (or null)';
  end if;
  if v_state is null then
    perform pgshield.breaker_check_name(p_name);  -- 22023
    perform pgshield.breaker_get(p_name, false);  -- PT404
  end if;
  v_gen := p_permit / 4294967296;
  v_lease := p_permit % 4294967296;
  if v_gen > v_current then
    raise exception using errcode = '22023', message = 'p_permit was not issued by this breaker',
      hint = format('breaker %L is at generation %s', p_name, v_current);
  end if;
  v_slow := coalesce(p_duration_ms >= v_slow_ms, false);
  v_bad := p_outcome = 'failure' or (p_outcome = 'success' and v_slow);

  -- Still without the row lock: any other fast success (or an ignored call)
  -- in the closed state. It writes the breaker row only when there are
  -- consecutive failures to forget, and counts the call only for a breaker
  -- with a rate rule, in this backend's own bucket row (so concurrent callers
  -- never wait on each other). Stale outcomes change nothing.
  if v_gen < v_current or v_state not in ('closed', 'half_open')
     or (v_state = 'closed' and (v_lease <> 0 or not v_bad)) then
    v_counted := v_gen = v_current and v_state = 'closed' and v_lease = 0 and p_outcome <> 'ignored';
    if v_counted then
      if v_streak > 0 then
        update pgshield.breakers b set consecutive_failures = 0
         where b.name = p_name and b.generation = v_gen and b.consecutive_failures > 0;
      end if;
      if v_rated then
        perform pgshield.breaker_count(p_name, v_gen, pgshield.now(), false, false);
      end if;
    end if;
    return row(v_state, v_current, false, v_counted, p_name)::public.breaker_release_result;
  end if;
  v_res.name := p_name;
  v_res.changed := false;
  v_res.counted := false;

  -- A failure or slow call while closed, or any trial outcome: under the row
  -- lock, judged by the newest state and a clock read after the lock.
  select * into v_b from pgshield.breakers b where b.name = p_name for update;
  if not found then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name);
  end if;
  v_now := greatest(pgshield.now(), v_b.changed_at);
  v_res.state := v_b.state;
  v_res.generation := v_b.generation;
  if v_gen <> v_b.generation then
    return v_res;  -- the state changed while this call waited: stale
  end if;

  if v_b.state = 'closed' then
    if v_lease <> 0 then
      return v_res;
    end if;
    perform pgshield.breaker_count(p_name, v_gen, v_now, p_outcome = 'failure', v_slow);
    v_res.counted := true;
    update pgshield.breakers b
       set consecutive_failures = case when p_outcome = 'failure' then b.consecutive_failures + 1 else 0 end
     where b.name = p_name
    returning b.consecutive_failures into v_b.consecutive_failures;
    v_trip := pgshield.breaker_trip_reason(v_b, v_now);
    if v_trip is not null then
      v_b := pgshield.breaker_transition(v_b, 'open', v_trip, v_now);
      v_res.changed := true;
    end if;
  elsif v_b.state = 'half_open' then
    -- Only the holder of a live lease of this generation reports a trial.
    delete from pgshield.breaker_leases l
     where l.name = p_name and l.lease_no = v_lease and l.generation = v_gen and l.expires_at > v_now;
    if not found then
      return v_res;
    end if;
    if p_outcome = 'ignored' then
      return v_res;  -- the slot is free again
    end if;
    v_res.counted := true;
    if v_bad then
      v_b := pgshield.breaker_transition(v_b, 'open',
        case when p_outcome = 'failure' then 'trial call failed'
             else format('trial call slow (%s ms >= %s ms)', p_duration_ms, v_b.slow_call_ms) end, v_now);
      v_res.changed := true;
    else
      update pgshield.breakers b set trial_successes = b.trial_successes + 1
       where b.name = p_name
      returning b.trial_successes into v_b.trial_successes;
      if v_b.trial_successes >= v_b.success_threshold then
        v_b := pgshield.breaker_transition(v_b, 'closed',
          format('%s of %s trial calls succeeded', v_b.trial_successes, v_b.success_threshold), v_now);
        v_res.changed := true;
      end if;
    end if;
  end if;
  v_res.state := v_b.state;
  v_res.generation := v_b.generation;
  return v_res;
end
$$;

revoke all on function public.release_breaker(text, bigint, text, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.release_breaker(text, bigint, text, integer) to service_role;

-- Creates a breaker, or replaces every setting of an existing one (its state
-- is kept; an open period already running keeps its end). At least one trip
-- rule: p_failure_threshold consecutive failures, p_failure_rate, or the
-- slow-call rule (p_slow_call_ms with p_slow_call_rate). Only a breaker with
-- a rate rule counts its successes; giving one to a breaker that had none
-- starts its window afresh. p_max_open_ms null: p_open_ms (no backoff beyond
-- it). Returns the breaker as JSON.
-- Callers: service_role.
-- Errors: 22023 bad name or setting (named in the message); 42501 other roles.
create or replace function public.configure_breaker(
  p_name text,
  p_failure_threshold integer default 5,
  p_failure_rate numeric default null,
  p_min_calls integer default 10,
  p_window_seconds integer default 60,
  p_slow_call_ms integer default null,
  p_slow_call_rate numeric default null,
  p_open_ms integer default 30000,
  p_backoff_factor numeric default 1,
  p_max_open_ms integer default null,
  p_half_open_permits integer default 1,
  p_lease_ms integer default 30000,
  p_success_threshold integer default 2
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_max_open integer := coalesce(p_max_open_ms, p_open_ms);
  v_unrated boolean;
begin
  perform pgshield.breaker_check_caller();
  perform pgshield.breaker_check_name(p_name);
  if p_failure_threshold is not null and p_failure_threshold not between 1 and 100000 then
    raise exception using errcode = '22023', message = 'p_failure_threshold must be between 1 and 100000 (or null)';
  end if;
  if p_failure_rate is not null and not (p_failure_rate > 0 and p_failure_rate <= 1) then
    raise exception using errcode = '22023', message = 'p_failure_rate must be > 0 and <= 1 (or null)';
  end if;
  if p_min_calls is null or p_min_calls not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_min_calls must be between 1 and 1000000';
  end if;
  if p_window_seconds is null or p_window_seconds not between 1 and 86400 then
    raise exception using errcode = '22023', message = 'p_window_seconds must be between 1 and 86400';
  end if;
  if (p_slow_call_ms is null) <> (p_slow_call_rate is null) then
    raise exception using errcode = '22023', message = 'p_slow_call_ms and p_slow_call_rate go together',
      hint = 'give both (a call taking >= p_slow_call_ms is slow; trip at that rate of slow calls) or neither';
  end if;
  if p_slow_call_ms not between 1 and 86400000 then
    raise exception using errcode = '22023', message = 'p_slow_call_ms must be between 1 and 86400000';
  end if;
  if not (p_slow_call_rate > 0 and p_slow_call_rate <= 1) then
    raise exception using errcode = '22023', message = 'p_slow_call_rate must be > 0 and <= 1';
  end if;
  if p_failure_threshold is null and p_failure_rate is null and p_slow_call_rate is null then
    raise exception using errcode = '22023', message = 'a breaker needs a trip rule',
      hint = 'p_failure_threshold, p_failure_rate, or p_slow_call_ms with p_slow_call_rate';
  end if;
  if p_open_ms is null or p_open_ms not between 1 and 86400000 then
    raise exception using errcode = '22023', message = 'p_open_ms must be between 1 and 86400000 (one day)';
  end if;
  if p_backoff_factor is null or p_backoff_factor not between 1 and 10 then
    raise exception using errcode = '22023', message = 'p_backoff_factor must be between 1 (no backoff) and 10';
  end if;
  if v_max_open not between p_open_ms and 604800000 then
    raise exception using errcode = '22023',
      message = 'p_max_open_ms must be between p_open_ms and 604800000 (a week)';
  end if;
  if p_half_open_permits is null or p_half_open_permits not between 1 and 1000 then
    raise exception using errcode = '22023', message = 'p_half_open_permits must be between 1 and 1000';
  end if;
  if p_lease_ms is null or p_lease_ms not between 1 and 86400000 then
    raise exception using errcode = '22023', message = 'p_lease_ms must be between 1 and 86400000';
  end if;
  if p_success_threshold is null or p_success_threshold not between 1 and 1000 then
    raise exception using errcode = '22023', message = 'p_success_threshold must be between 1 and 1000';
  end if;

  select b.failure_rate is null and b.slow_call_rate is null into v_unrated
    from pgshield.breakers b where b.name = p_name for update;
  insert into pgshield.breakers as b
    (name, failure_threshold, failure_rate, min_calls, window_seconds, slow_call_ms, slow_call_rate,
     open_ms, backoff_factor, max_open_ms, half_open_permits, lease_ms, success_threshold, changed_at,
     generation)
  values (p_name, p_failure_threshold, p_failure_rate, p_min_calls, p_window_seconds, p_slow_call_ms,
          p_slow_call_rate, p_open_ms, p_backoff_factor, v_max_open, p_half_open_permits, p_lease_ms,
          p_success_threshold, pgshield.now(),
          coalesce((select t.generation + 1 from pgshield.breaker_tombstones t where t.name = p_name), 1))
  on conflict (name) do update
     set failure_threshold = excluded.failure_threshold, failure_rate = excluded.failure_rate,
         min_calls = excluded.min_calls, window_seconds = excluded.window_seconds,
         slow_call_ms = excluded.slow_call_ms, slow_call_rate = excluded.slow_call_rate,
         open_ms = excluded.open_ms, backoff_factor = excluded.backoff_factor,
         max_open_ms = excluded.max_open_ms, half_open_permits = excluded.half_open_permits,
         lease_ms = excluded.lease_ms, success_threshold = excluded.success_threshold;
  -- Successes are counted only while a breaker has a rate rule. When one is
  -- added, the window starts afresh: the failures counted alone before would
  -- otherwise weigh as if they were every call.
  if v_unrated and (p_failure_rate is not null or p_slow_call_rate is not null) then
    delete from pgshield.breaker_buckets k where k.name = p_name;
  end if;
  return pgshield.breaker_json(p_name);
end
$$;

revoke all on function public.configure_breaker(text, integer, numeric, integer, integer, integer, numeric,
  integer, numeric, integer, integer, integer, integer) from public, anon, authenticated, service_role;
grant execute on function public.configure_breaker(text, integer, numeric, integer, integer, integer, numeric,
  integer, numeric, integer, integer, integer, integer) to service_role;

-- Every breaker's state and its window: calls, failures and slow calls in
-- the last window_seconds (every generation, summed over the backends'
-- bucket rows), the failure rate, the time until an open breaker admits
-- trials, live trial leases, the last change. calls and failure_rate are null
-- for a breaker without a rate rule: its successes are not counted (that
-- keeps its healthy path free of writes); its failures are.
-- Security definer so that the view works for service_role.
-- Callers: the owner, service_role (through the view). Errors: none.
create or replace function pgshield.breaker_status_rows()
returns table (
  name text, state text, generation bigint, calls bigint, failures bigint, slow_calls bigint,
  failure_rate numeric, consecutive_failures integer, half_open_in_ms integer, trial_leases bigint,
  trial_successes integer, open_until timestamptz, last_change_at timestamptz, last_reason text
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
begin
  return query
  select b.name, b.state, b.generation,
         case when b.failure_rate is not null or b.slow_call_rate is not null then coalesce(w.calls, 0) end,
         coalesce(w.failures, 0), coalesce(w.slow, 0),
         case when (b.failure_rate is not null or b.slow_call_rate is not null) and w.calls > 0
              then round(w.failures::numeric / w.calls, 4) end,
         b.consecutive_failures,
         case when b.state = 'open' then
           case when v_now >= b.open_until then 0 else pgshield.breaker_ms_until(b.open_until, v_now) end
         end,
         (select count(*) from pgshield.breaker_leases l where l.name = b.name and l.expires_at > v_now),
         b.trial_successes, b.open_until, b.changed_at, b.reason
    from pgshield.breakers b
    left join lateral (
      select sum(k.calls) as calls, sum(k.failures) as failures, sum(k.slow) as slow
        from pgshield.breaker_buckets k
       where k.name = b.name and k.second > v_now - b.window_seconds * interval '1 second'
    ) w on true;
end
$$;

revoke all on function pgshield.breaker_status_rows() from public, anon, authenticated, service_role;
grant execute on function pgshield.breaker_status_rows() to service_role;
