-- job_put_fresh: publish jobs whose ids the client has just generated (uuid4), to run now.
-- The fast path of job_put for the common case (delay(), map()): no delay, no eta, no id that
-- could belong to an earlier run, so no result or finished-index entry to clear. Each Redis
-- command runs once for the whole batch instead of once per job; one job (delay()) takes the
-- shortest path: HSETNX is its guard and its write.
-- KEYS[1] feed.ids:<f>        LIST  (LPUSH normal, RPUSH priority; consumers pop the right)
-- KEYS[2] feed.items:<f>      HASH  id -> payload
-- KEYS[3] feed.published:<f>  ZSET  id -> publish ms
-- KEYS[4] feed.publishes:<f>  counter
-- KEYS[5] feed.wake:<f>       LIST  wake-up markers for blocked workers
-- ARGV[1] priority: '1' = all to the head (RPUSH), '0' = all to the tail (LPUSH)
-- ARGV[2 .. 2n+1] per job: id, item (n at most 1000)
-- Returns: a list of n flags: 1 = published, 0 = an item with that id already exists (nothing
--          written for it; only a caller that reused an id can see this).
-- Events: none (the v1 contract publishes no event on job put).
--@include _now.lua
--@include _wake.lua
local n = (#ARGV - 1) / 2
if n > 1000 or n ~= math.floor(n) then
  return redis.error_reply('ERR job_put_fresh: 1 to 1000 (id, item) pairs')
end
local now = now_ms()
local push = ARGV[1] == '1' and 'RPUSH' or 'LPUSH'
if n == 1 then  -- one job (delay()): HSETNX is the guard and the write in one command
  local id = ARGV[2]
  if redis.call('HSETNX', KEYS[2], id, ARGV[3]) == 0 then return {0} end
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('INCR', KEYS[4])
  redis.call(push, KEYS[1], id)
  push_wake_markers(KEYS[5], 1)
  return {1}
end
local ids = {}
for i = 1, n do ids[i] = ARGV[2 * i] end
local existing = redis.call('HMGET', KEYS[2], unpack(ids))
local out, fields, scored, fresh = {}, {}, {}, {}
local now_str = tostring(now)  -- one string, not a number redis.call formats once per job
for i = 1, n do
  if existing[i] then
    out[i] = 0
  else
    out[i] = 1
    local id = ids[i]
    fields[#fields + 1] = id
    fields[#fields + 1] = ARGV[2 * i + 1]
    scored[#scored + 1] = now_str
    scored[#scored + 1] = id
    fresh[#fresh + 1] = id
  end
end
local k = #fresh
if k == 0 then return out end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[3], unpack(scored))
redis.call('INCRBY', KEYS[4], k)
redis.call(push, KEYS[1], unpack(fresh))
push_wake_markers(KEYS[5], k)
return out
