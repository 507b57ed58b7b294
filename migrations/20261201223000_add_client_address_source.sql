-- pgshield 0.2.0: where anonymous callers' addresses come from.
--
-- 0.1.0 keyed anonymous callers by the first x-forwarded-for entry, which the
-- client writes itself. The address now comes from a configured header and
-- number of trusted proxy hops, counted from the right, IPv6 grouped by /64.
-- anon gets usage on schema pgshield: the public entry points become security
-- invoker and call pgshield functions granted to anon one by one. And
-- pgshield.assert_pack_type(), which refuses look-alike types made by others.

-- The hop count and prefixes are small bounded integers (checks below).
-- squawk-ignore-file prefer-bigint-over-int

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

revoke all on schema pgshield from public;
grant usage on schema pgshield to anon, authenticated, service_role;

-- --------------------------------------------------------- client address ----
-- Anonymous callers are told apart by their network address, and the only
-- place PostgREST shows it is a request header that proxies fill in. A client
-- writes whatever it likes into that header; proxies that append (nginx,
-- Kong, Cloudflare's X-Forwarded-For) keep the client's entries at the front.
-- So the address is the entry `trusted_hops` from the RIGHT of the configured
-- header: the one your nearest trusted proxy wrote. With the default
-- (x-forwarded-for, 1 hop) prepending entries never changes the answer.
-- header null: no trustworthy source; every anonymous caller is one subject.
-- IPv6 addresses are grouped by prefix (/64 by default: one customer line),
-- IPv4 by /32 unless configured otherwise. See docs/security.md.

create table if not exists pgshield.client_address_source (
  id boolean primary key default true
    constraint client_address_source_id_check check (id),
  header text
    constraint client_address_source_header_check check (header ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
  trusted_hops integer not null default 1
    constraint client_address_source_hops_check check (trusted_hops between 1 and 16),
  ipv4_prefix integer not null default 32
    constraint client_address_source_ipv4_check check (ipv4_prefix between 8 and 32),
  ipv6_prefix integer not null default 64
    constraint client_address_source_ipv6_check check (ipv6_prefix between 16 and 128),
  updated_at timestamptz not null default now()
);
comment on table pgshield.client_address_source is
  'Where the client address of anonymous callers comes from. Edit with pgshield.set_client_address_source().';
alter table pgshield.client_address_source enable row level security;
revoke all on table pgshield.client_address_source from public, anon, authenticated, service_role;
insert into pgshield.client_address_source (id, header, trusted_hops, ipv4_prefix, ipv6_prefix)
values (true, 'x-forwarded-for', 1, 32, 64)
on conflict (id) do nothing;

-- The calling client's address as a subject key: '203.0.113.7' (IPv4 /32), or
-- the network for a shorter prefix ('2001:db8:1:2::/64'); null when the
-- configured header is missing, has fewer entries than trusted hops, or its
-- entry is not an address. Reads request.headers as PostgREST sets it.
-- Callers: pack functions (runs as the owner). Errors: none.
create or replace function pgshield.client_address() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_src pgshield.client_address_source;
  v_raw text;
  v_parts text[];
  v_entry text;
  v_ip inet;
begin
  select * into v_src from pgshield.client_address_source s where s.id;
  if v_src.header is null then
    return null;
  end if;
  v_raw := nullif(current_setting('request.headers', true), '')::jsonb ->> v_src.header;
  if v_raw is null or length(v_raw) > 8192 then
    return null;
  end if;
  v_parts := string_to_array(v_raw, ',');
  if cardinality(v_parts) < v_src.trusted_hops then
    return null;
  end if;
  v_entry := btrim(v_parts[cardinality(v_parts) - v_src.trusted_hops + 1]);
  if v_entry ~ '^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$' then
    v_entry := substring(v_entry from '^\[([0-9A-Fa-f:.]+)\]');
  elsif v_entry ~ '^[0-9.]{7,15}:[0-9]{1,5}$' then
    v_entry := split_part(v_entry, ':', 1);
  end if;
  if v_entry !~ '^[0-9A-Fa-f:.]{2,45}$' then
    return null;
  end if;
  begin
    v_ip := v_entry::inet;
  exception when invalid_text_representation then
    return null;
  end;
  v_ip := network(set_masklen(v_ip,
    case when family(v_ip) = 4 then v_src.ipv4_prefix else v_src.ipv6_prefix end));
  return case when masklen(v_ip) = case when family(v_ip) = 4 then 32 else 128 end
              then host(v_ip) else v_ip::text end;
end
$$;

revoke all on function pgshield.client_address() from public, anon, authenticated, service_role;

-- Sets where client addresses come from; returns the new setting.
--   hosted Supabase:            p_header => 'cf-connecting-ip' (set by Cloudflare)
--   self-hosted, Kong in front: p_header => 'x-forwarded-for', p_trusted_hops => 1
--   one more proxy before Kong: p_trusted_hops => 2
--   PostgREST reachable directly (no proxy): p_header => null
-- Callers: service_role, the owner. Errors: 22023 bad header, hops or prefix; 42501 others.
create or replace function pgshield.set_client_address_source(
  p_header text,
  p_trusted_hops integer default 1,
  p_ipv4_prefix integer default 32,
  p_ipv6_prefix integer default 64
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set the client address source';
  end if;
  if p_header is not null and lower(p_header) !~ '^[a-z0-9][a-z0-9-]{0,63}$' then
    raise exception using errcode = '22023', message = 'p_header must be a header name (letters, digits, -) or null',
      hint = 'e.g. x-forwarded-for, cf-connecting-ip, x-real-ip';
  end if;
  if p_trusted_hops is null or p_trusted_hops not between 1 and 16 then
    raise exception using errcode = '22023', message = 'p_trusted_hops must be between 1 and 16';
  end if;
  if p_ipv4_prefix is null or p_ipv4_prefix not between 8 and 32 then
    raise exception using errcode = '22023', message = 'p_ipv4_prefix must be between 8 and 32';
  end if;
  if p_ipv6_prefix is null or p_ipv6_prefix not between 16 and 128 then
    raise exception using errcode = '22023', message = 'p_ipv6_prefix must be between 16 and 128';
  end if;
  insert into pgshield.client_address_source as s (id, header, trusted_hops, ipv4_prefix, ipv6_prefix, updated_at)
  values (true, lower(p_header), p_trusted_hops, p_ipv4_prefix, p_ipv6_prefix, now())
  on conflict (id) do update
     set header = excluded.header, trusted_hops = excluded.trusted_hops,
         ipv4_prefix = excluded.ipv4_prefix, ipv6_prefix = excluded.ipv6_prefix, updated_at = now();
  return pgshield.client_address_source();
end
$$;

revoke all on function pgshield.set_client_address_source(text, integer, integer, integer)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.set_client_address_source(text, integer, integer, integer) to service_role;

-- The current client address source as JSON.
-- Callers: service_role, the owner. Errors: 42501 others.
create or replace function pgshield.client_address_source() returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may read the client address source';
  end if;
  return (select jsonb_build_object('header', s.header, 'trusted_hops', s.trusted_hops,
                                    'ipv4_prefix', s.ipv4_prefix, 'ipv6_prefix', s.ipv6_prefix,
                                    'updated_at', s.updated_at)
            from pgshield.client_address_source s where s.id);
end
$$;

revoke all on function pgshield.client_address_source() from public, anon, authenticated, service_role;
grant execute on function pgshield.client_address_source() to service_role;

-- ------------------------------------------------------------ pack types ----
-- Refuses (42501) a composite type the pack means to own when it exists with
-- another owner or other fields: a look-alike made beforehand by someone else
-- (say, with a field whose domain CHECK calls their function) would run their
-- code inside the pack's functions, as the pack's owner. p_fields lists
-- "name type" pairs as format_type() spells them, comma separated.
-- Callers: the migrations (the owner). Errors: 42501.
create or replace function pgshield.assert_pack_type(p_type text, p_fields text) returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_type oid := to_regtype(p_type);
  v_owner oid;
  v_fields text;
begin
  if v_type is null then
    return;
  end if;
  select t.typowner,
         (select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' order by a.attnum)
            from pg_attribute a
           where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped)
    into v_owner, v_fields
    from pg_type t where t.oid = v_type;
  if v_owner <> (select n.nspowner from pg_namespace n where n.nspname = 'pgshield')
     or v_fields is distinct from p_fields then
    raise exception using errcode = '42501',
      message = format('%s exists but was not created by pgshield (owner %s)', p_type, v_owner::regrole),
      detail = format('expected fields: %s; found: %s', p_fields, coalesce(v_fields, 'not a composite type')),
      hint = 'it is not yours: find out who made it, drop it, then apply the migrations again';
  end if;
end
$$;

revoke all on function pgshield.assert_pack_type(text, text) from public, anon, authenticated, service_role;
