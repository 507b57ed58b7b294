-- teams: the last-owner rule and the per-user teams limit hold under
-- REPEATABLE READ too.
-- The owner trigger locked the team with FOR UPDATE and counted owners. Under
-- REPEATABLE READ the count used the transaction's snapshot, and a cascade
-- from auth.users only locked the team without writing it, so two owners'
-- accounts deleted at once (or one deleted while the other left) could both
-- pass and leave a team with no owner. The trigger now writes the team row
-- (an update of revision, as every entry point's team_guard does): a
-- transaction whose snapshot misses a change committed meanwhile fails with
-- 40001 instead.
-- team_create queued one user's creations on an advisory lock and counted
-- their teams, which under REPEATABLE READ counted from a snapshot taken
-- before the lock (16 concurrent creations with a limit of 2 made 16 teams).
-- Each creation by a signed-in user now writes that user's row in the new
-- table pgshield.team_creators first: the creations queue on it, and under
-- REPEATABLE READ one whose snapshot misses another fails with 40001. It
-- locks the user's auth.users row (key share) before that row, in the order
-- an account deletion takes them, so a creation racing its user's deletion
-- fails with 23503 rather than deadlock.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- One row per signed-in user who created a team: every creation by that user
-- writes it first (creations counts them, ever), so one user's creations
-- queue on it and the count of their teams that follows is exact; under
-- REPEATABLE READ a creation whose snapshot misses another that committed
-- meanwhile fails with 40001 instead of counting from that old snapshot.
create table if not exists pgshield.team_creators (
  user_id uuid primary key references auth.users (id) on delete cascade,
  creations bigint not null default 0
);
comment on table pgshield.team_creators is
  'Per signed-in user: how many teams they ever created; the row every creation by them writes first (the per-user teams limit).';
alter table pgshield.team_creators enable row level security;
revoke all on table pgshield.team_creators from public, anon, authenticated, service_role;

-- After a member's update or delete: the team (if it still exists) must keep
-- an owner. Locks the team by writing it (an update of revision, as
-- team_guard does: the entry points hold that lock already; a cascade from
-- auth.users takes it here), then counts owners, so two owners demoting each
-- other, leaving or being deleted at once cannot both succeed: under READ
-- COMMITTED the count's snapshot is taken after the lock; under REPEATABLE
-- READ a transaction whose snapshot misses a change committed meanwhile
-- fails with 40001 at the update (a plain FOR UPDATE would not: a cascade
-- that only locked the team would leave no newer version to conflict with).
-- Security definer: it also fires for whoever deletes an auth user (the
-- cascade) and must read the team. Callers: trigger team_members_keep_an_owner.
-- Errors: PT409.
create or replace function pgshield.team_members_keep_an_owner() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text;
begin
  if tg_op = 'UPDATE' and new.role = 'owner' and new.team_id = old.team_id then
    return null;
  end if;
  update pgshield.teams t set revision = t.revision + 1 where t.id = old.team_id returning t.slug into v_slug;
  if not found then
    return null;  -- the team itself is being deleted
  end if;
  if not exists (select 1 from pgshield.team_members m where m.team_id = old.team_id and m.role = 'owner') then
    raise exception using errcode = 'PT409',
      message = format('team %L must keep an owner', v_slug),
      detail = format('this would remove the last owner (user %s)', old.user_id),
      hint = 'make another member owner first (transfer_team_ownership), or delete the team';
  end if;
  return null;
end
$$;

revoke all on function pgshield.team_members_keep_an_owner() from public, anon, authenticated, service_role;

-- Creates a team and its owner membership. Callers: through teams_call.
-- Errors: 22023 bad name, slug, email or owner; 42501 another user as owner;
-- 23505 slug taken; PT409 the caller's teams limit (set_teams_limits).
create or replace function pgshield.team_create(
  p_name text, p_slug text, p_owner_id uuid, p_billing_email text
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_name text := pgshield.team_name(p_name);
  v_slug text := pgshield.team_slug(p_slug);
  v_email text := pgshield.team_email(p_billing_email, 'p_billing_email');
  v_owner uuid := coalesce(p_owner_id, v_actor);
  v_now timestamptz := pgshield.now();
  v_team pgshield.teams;
  v_max integer;
begin
  if v_actor is not null and v_owner <> v_actor then
    raise exception using errcode = '42501', message = 'you can only create teams you own yourself',
      hint = 'omit p_owner_id; service_role may name another owner';
  end if;
  if v_owner is null then
    raise exception using errcode = '22023', message = 'p_owner_id is required for trusted callers';
  end if;
  perform pgshield.team_user(v_owner, 'p_owner_id');
  if v_actor is not null then
    -- One creation at a time per user, so that the count below is exact:
    -- each writes the user's team_creators row first (under REPEATABLE READ,
    -- 40001 when another creation committed after this snapshot was taken).
    -- The user's auth.users row is locked (key share) before it, in the order
    -- an account deletion takes them (the user, then this row by its cascade):
    -- a creation racing its user's deletion waits, then fails with 23503,
    -- never deadlocks.
    perform 1 from auth.users u where u.id = v_actor for key share;
    insert into pgshield.team_creators as c (user_id, creations) values (v_actor, 1)
    on conflict (user_id) do update set creations = c.creations + 1;
    v_max := coalesce((select s.max_teams_per_user from pgshield.teams_settings s where s.id), 100);
    if (select count(*) from (select 1 from pgshield.teams t where t.created_by = v_actor limit v_max) x) >= v_max then
      raise exception using errcode = 'PT409',
        message = format('you have created %s teams, the most one user may', v_max),
        hint = 'delete one of them; the project sets the limit with pgshield.set_teams_limits()';
    end if;
  end if;
  begin
    insert into pgshield.teams (name, slug, billing_email, created_by, created_at, updated_at)
    values (v_name, v_slug, v_email, coalesce(v_actor, v_owner), v_now, v_now)
    returning * into v_team;
  exception when unique_violation then
    raise exception using errcode = '23505', message = format('the team slug %L is taken', v_slug),
      hint = 'choose another slug';
  end;
  insert into pgshield.team_members (team_id, user_id, role, granted_by, created_at, updated_at, joined_via)
  values (v_team.id, v_owner, 'owner', v_actor, v_now, v_now,
          case when v_actor is null then 'service' else 'created' end);
  perform pgshield.team_audit_write(v_team.id, 'create_team', 'ok', v_owner, null, null,
                                    jsonb_build_object('slug', v_slug, 'name', v_name));
  return pgshield.team_json(v_team);
end
$$;

revoke all on function pgshield.team_create(text, text, uuid, text) from public, anon, authenticated, service_role;
