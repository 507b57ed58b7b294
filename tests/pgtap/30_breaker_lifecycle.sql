-- breaker: a breaker dropped and created again never moves back in generation.
begin;
\ir _helpers.psql
select plan(6);

select pgshield.set_clock('2001-01-01 00:00:00+00');
select public.configure_breaker('pgshield_t_life', p_failure_threshold => 1);
create temp table pgshield_t_old as select (public.acquire_breaker('pgshield_t_life')).permit as permit;
select is((public.release_breaker('pgshield_t_life', (select permit from pgshield_t_old), 'failure')).state,
          'open', 'one failure opens the breaker (generation 2)');
select is(public.drop_breaker('pgshield_t_life'), true, 'the breaker is dropped');
select is((select generation from pgshield.breaker_tombstones where name = 'pgshield_t_life'), 2::bigint,
          '... and its last generation is kept');
select is((public.acquire_breaker('pgshield_t_life')).generation, 3::bigint,
          'created again on first use, it starts after the dropped generation');
select is((public.release_breaker('pgshield_t_life', (select permit from pgshield_t_old), 'failure')).counted,
          false, 'a permit from before the drop is stale: it changes nothing');
select public.configure_breaker('pgshield_t_life2');
select public.drop_breaker('pgshield_t_life2');
select is((public.configure_breaker('pgshield_t_life2') ->> 'generation')::bigint, 2::bigint,
          'configure_breaker after a drop starts after the tombstone too');

select * from finish();
rollback;
