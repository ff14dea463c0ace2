-- job_put: publish one or more jobs on a job channel (normal, priority, or delayed).
-- KEYS[1] feed.ids:<f>        LIST  (LPUSH normal, RPUSH priority; consumers pop the right)
-- KEYS[2] feed.items:<f>      HASH  id -> payload
-- KEYS[3] feed.published:<f>  ZSET  id -> publish ms
-- KEYS[4] feed.publishes:<f>  counter
-- KEYS[5] feed.delayed:<f>    ZSET  id -> due ms
-- KEYS[6] feed.urgent:<f>     SET   delayed ids that go to the head when due
-- KEYS[7] feed.wake:<f>       LIST  wake-up markers for blocked workers
-- KEYS[8] feed.finished:<f>   ZSET  index of finished ids
-- KEYS[8+i] feed.result:<f>:<id_i>  the stored result of job i
-- ARGV[1] n (number of jobs, at most 1000)
-- ARGV[2 + 5*(i-1) ...] per job: id, item, priority ('1'/'0'), delay_ms, eta_ms (absolute, '0' = none)
-- Returns: a list of n flags: 1 = published, 0 = an item with that id already exists (nothing
--          written for it: a waiting, delayed, claimed or stalled job is never doubled).
--          Publishing the id of a FINISHED job starts a new run: the old result and the
--          finished-index entry are removed so they are not mistaken for the new run's.
-- Events: none (the v1 contract publishes no event on job put).
--@include _now.lua
--@include _put.lua
--@include _wake.lua
local n = tonumber(ARGV[1])
if n > 1000 then return redis.error_reply('ERR job_put: at most 1000 jobs per call') end
local now = now_ms()
local out = {}
local woken = 0
for i = 1, n do
  local b = 2 + 5 * (i - 1)
  local id, item, prio = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local delay, eta = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if not put_job_record(KEYS[2], KEYS[3], KEYS[4], KEYS[8], KEYS[8 + i], now, id, item) then
    out[i] = 0
  else
    local due = 0
    if eta > 0 then due = eta elseif delay > 0 then due = now + delay end
    if due > now then
      redis.call('ZADD', KEYS[5], due, id)
      if prio == '1' then redis.call('SADD', KEYS[6], id) end
      woken = woken + 1  -- a blocked worker wakes and re-times its wait to the new due time
    else
      if prio == '1' then redis.call('RPUSH', KEYS[1], id) else redis.call('LPUSH', KEYS[1], id) end
      woken = woken + 1
    end
    out[i] = 1
  end
end
push_wake_markers(KEYS[7], woken)
return out
