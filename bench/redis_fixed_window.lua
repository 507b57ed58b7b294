-- A fixed-window rate limiter as it is commonly run on Redis: the benchmark's reference.
-- KEYS[1] the key (the caller puts the window in it); ARGV[1] the limit; ARGV[2] the window
-- in seconds. Returns {allowed (1/0), remaining}. Like most such scripts it counts denied
-- calls too, and the window starts at the key's first call rather than on the epoch.
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local limit = tonumber(ARGV[1])
if n > limit then
  return {0, 0}
end
return {1, limit - n}
