-- ------------------------------------------------------------- operators ----

-- Sets the permissions of a role (not owner: owners always have all four);
-- returns them. Callers: service_role, the owner.
-- Errors: 22023 bad role or permission; 42501 others.
create or replace function pgshield.set_team_role_permissions(p_role text, p_permissions text[]) returns text[]
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text;
  v_permissions text[];
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may change role permissions';
  end if;
  v_role := pgshield.team_role(p_role, 'p_role');
  v_permissions := pgshield.team_permission_list(p_permissions, 'p_permissions');
  if v_role = 'owner' then
    raise exception using errcode = '22023', message = 'owners always have every permission';
  end if;
  delete from pgshield.team_role_permissions rp where rp.role = v_role and rp.permission <> all(v_permissions);
  insert into pgshield.team_role_permissions (role, permission)
  select v_role, p from unnest(v_permissions) p
  on conflict do nothing;
  perform pgshield.team_audit_write(null, 'set_role_permissions', 'ok', null, null, null,
                                    jsonb_build_object('role', v_role, 'permissions', v_permissions));
  return v_permissions;
end
$$;

revoke all on function pgshield.set_team_role_permissions(text, text[]) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_team_role_permissions(text, text[]) to service_role;

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

-- Sets how much one signed-in user may create (null keeps a limit): teams
-- created by or for them that still exist (created_by), and open invitations
-- (neither accepted, revoked nor expired) per team. A call past a limit is
-- refused with PT409 (audited); trusted callers are not limited. Returns both.
-- Callers: service_role, the owner. Errors: 22023; 42501 others.
create or replace function pgshield.set_teams_limits(
  p_max_teams_per_user integer default null,
  p_max_open_invitations_per_team integer default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgshield.teams_settings;
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set the teams limits';
  end if;
  if p_max_teams_per_user not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_max_teams_per_user must be between 1 and 1000000';
  end if;
  if p_max_open_invitations_per_team not between 1 and 1000000 then
    raise exception using errcode = '22023',
      message = 'p_max_open_invitations_per_team must be between 1 and 1000000';
  end if;
  insert into pgshield.teams_settings (id) values (true) on conflict (id) do nothing;
  update pgshield.teams_settings s
     set max_teams_per_user = coalesce(p_max_teams_per_user, s.max_teams_per_user),
         max_open_invitations_per_team = coalesce(p_max_open_invitations_per_team, s.max_open_invitations_per_team),
         updated_at = now()
   where s.id
  returning * into v_row;
  return jsonb_build_object('max_teams_per_user', v_row.max_teams_per_user,
                            'max_open_invitations_per_team', v_row.max_open_invitations_per_team);
end
$$;

revoke all on function pgshield.set_teams_limits(integer, integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_teams_limits(integer, integer) to service_role;

-- Deletes up to p_batch_size invitations that can no longer be accepted
-- (expired, used or revoked) and up to p_batch_size audit rows older than
-- the retention; returns how many rows it deleted. Call it in a loop until
-- it returns less than the batch. Callers: service_role, the owner.
-- Errors: 22023 bad batch size.
create or replace function pgshield.teams_cleanup(p_batch_size integer default 10000) returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_retention interval;
  v_invitations integer;
  v_audit integer;
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  select s.audit_retention into v_retention from pgshield.teams_settings s where s.id;
  delete from pgshield.team_invitations i
   using (select x.id from pgshield.team_invitations x
           where x.expires_at <= v_now or x.accepted_at is not null or x.revoked_at is not null
           limit p_batch_size for update skip locked) d
   where i.id = d.id;
  get diagnostics v_invitations = row_count;
  delete from pgshield.team_audit a
   using (select x.id from pgshield.team_audit x
           where x.at < v_now - coalesce(v_retention, interval '180 days')
           order by x.at limit p_batch_size for update skip locked) d
   where a.id = d.id;
  get diagnostics v_audit = row_count;
  return v_invitations + v_audit;
end
$$;

revoke all on function pgshield.teams_cleanup(integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.teams_cleanup(integer) to service_role;

-- One row of counts for the status view. Callers: the owner, service_role
-- (through the view). Errors: none.
create or replace function pgshield.teams_status_row()
returns table (
  teams bigint, memberships bigint, teams_without_owner bigint, pending_invitations bigint,
  audit_rows bigint, denied_last_day bigint, audit_retention interval
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
begin
  return query
  select (select count(*) from pgshield.teams),
         (select count(*) from pgshield.team_members),
         (select count(*) from pgshield.teams t
           where not exists (select 1 from pgshield.team_members m where m.team_id = t.id and m.role = 'owner')),
         (select count(*) from pgshield.team_invitations i
           where i.accepted_at is null and i.revoked_at is null and i.expires_at > v_now),
         (select count(*) from pgshield.team_audit),
         (select count(*) from pgshield.team_audit a where a.outcome = 'denied' and a.at > v_now - interval '1 day'),
         (select s.audit_retention from pgshield.teams_settings s where s.id);
end
$$;

revoke all on function pgshield.teams_status_row() from public, anon, authenticated, service_role;
grant execute on function pgshield.teams_status_row() to service_role;

-- Counts for dashboards; teams_without_owner is always 0.
create or replace view pgshield.teams_status as
select s.teams, s.memberships, s.teams_without_owner, s.pending_invitations, s.audit_rows,
       s.denied_last_day, s.audit_retention
  from pgshield.teams_status_row() s;
comment on view pgshield.teams_status is
  'Teams, memberships, teams without an owner (always 0), pending invitations, audit rows, refusals in the last day.';
revoke all on table pgshield.teams_status from public, anon, authenticated, service_role;
grant select on table pgshield.teams_status to service_role;

-- ------------------------------------------------------------------ seeds ----
-- The default permissions of each role; edit them with
-- pgshield.set_team_role_permissions (existing rows are left as they are).

insert into pgshield.team_role_permissions (role, permission)
values ('owner', 'read'), ('owner', 'write'), ('owner', 'delete'), ('owner', 'admin'),
       ('admin', 'read'), ('admin', 'write'), ('admin', 'delete'), ('admin', 'admin'),
       ('member', 'read'), ('member', 'write'),
       ('viewer', 'read')
on conflict do nothing;

insert into pgshield.teams_settings (id) values (true) on conflict (id) do nothing;
