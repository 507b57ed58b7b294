-- breaker: a breaker is auto-created by the settings as they are once the
-- call holds them, and a failure streak with the failure rule off no longer
-- overflows.
-- breaker_get read auto_create and max_breakers, then waited for the settings
-- row's lock and created by the values it had read: creations queued while an
-- operator turned auto_create off or lowered the cap still created their
-- breakers. It now takes the lock by writing the settings row and decides by
-- the row that returns (under REPEATABLE READ a creation whose snapshot
-- misses another fails with 40001 instead of counting from it).
-- release_breaker counted consecutive failures in an integer even when the
-- failure threshold is off: after 2^31 failures without a success every
-- failure report failed with 22003. The streak now stops at 2147483647.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The breaker p_name, created with the defaults when missing and the
-- installation auto-creates (up to max_breakers), else PT404.
-- Callers: pack functions. Errors: PT404 unknown breaker; PT409 too many breakers.
create or replace function pgshield.breaker_get(p_name text, p_create boolean) returns pgshield.breakers
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_settings pgshield.breaker_settings;
begin
  select * into v_b from pgshield.breakers b where b.name = p_name;
  if found then
    return v_b;
  end if;
  select * into v_settings from pgshield.breaker_settings s where s.id;
  if p_create and coalesce(v_settings.auto_create, true) then
    -- Creations take turns on the settings row, so concurrent ones cannot pass
    -- the cap together, and decide by the settings as they are once this call
    -- holds it (a change committed while it waited applies). The row is
    -- written, not only locked: under REPEATABLE READ a creation whose
    -- snapshot misses another fails with 40001 instead of counting from it.
    update pgshield.breaker_settings s set updated_at = s.updated_at where s.id
    returning s.* into v_settings;
  end if;
  if not p_create or not coalesce(v_settings.auto_create, true) then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name),
      hint = 'create it with configure_breaker(), or turn auto_create on with pgshield.set_breaker_settings()';
  end if;
  -- A caller that waited here behind the creation of the same name uses that
  -- breaker (the cap counts it already).
  select * into v_b from pgshield.breakers b where b.name = p_name;
  if found then
    return v_b;
  end if;
  if (select count(*) from pgshield.breakers) >= coalesce(v_settings.max_breakers, 1000) then
    raise exception using errcode = 'PT409',
      message = format('breaker %L not created: there are already %s breakers', p_name, v_settings.max_breakers),
      hint = 'breaker names must not come from user input; raise max_breakers with pgshield.set_breaker_settings()';
  end if;
  insert into pgshield.breakers (name, changed_at, generation)
  values (p_name, pgshield.now(),
          coalesce((select t.generation + 1 from pgshield.breaker_tombstones t where t.name = p_name), 1))
  on conflict (name) do nothing;
  select * into v_b from pgshield.breakers b where b.name = p_name;
  return v_b;
end
$$;

revoke all on function pgshield.breaker_get(text, boolean) from public, anon, authenticated, service_role;

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
  v_window integer;
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
         b.failure_rate is not null or b.slow_call_rate is not null, b.window_seconds
    into v_state, v_current, v_streak, v_slow_ms, v_rated, v_window
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
        perform pgshield.breaker_count(p_name, v_gen, pgshield.now(), false, false, v_window);
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
    perform pgshield.breaker_count(p_name, v_gen, v_now, p_outcome = 'failure', v_slow, v_b.window_seconds);
    v_res.counted := true;
    update pgshield.breakers b
       -- (capped: a breaker whose failure threshold is off still counts the streak)
       set consecutive_failures = case when p_outcome = 'failure'
                                       then least(b.consecutive_failures, 2147483646) + 1 else 0 end
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
