-- job_stall: park a claimed job; it is never dispatched until retried.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.stalled:<f>  KEYS[6] feed.reasons:<f>  KEYS[7] feed.published:<f>
-- KEYS[8] feed.stalledat:<f>  ZSET id -> stall ms
-- ARGV[1] id  ARGV[2] token ('' = no fencing check)  ARGV[3] reason (kept until retry)
-- KEYS[9] feed.record:<f>:<id> (optional: the job record, fields as in _record.lua; with
--   ARGV[4] record ttl ms and ARGV[5] label (task name) it keeps outcome 'stalled', the worker,
--   the claim (started) and publish times and the stall time (f); the q/v/u requeue history
--   of an earlier record is kept, as job_reap_stall keeps it)
-- Returns: 1 stalled, 0 not claimed, -1 lease lost (nothing changed).
-- Unlike the original clients, the cancel count is kept (history survives a stall).
-- Events: none.
--@include _now.lua
--@include _owner.lua
local id = ARGV[1]
local code = check_owner(KEYS[1], KEYS[3], id, ARGV[2])
if code ~= 1 then return code end
if KEYS[9] and tonumber(ARGV[4]) > 0 then  -- the job record, read before unclaim (b-history)
  local fields = {'o', 'stalled', 'f', now_ms(), 'l', ARGV[5]}
  local worker, started = redis.call('HGET', KEYS[4], id), redis.call('ZSCORE', KEYS[1], id)
  local published = redis.call('ZSCORE', KEYS[7], id)
  if worker then fields[#fields + 1] = 'w'; fields[#fields + 1] = worker end
  if started then fields[#fields + 1] = 's'; fields[#fields + 1] = started end
  if published then fields[#fields + 1] = 'p'; fields[#fields + 1] = published end
  local kept = redis.call('HMGET', KEYS[9], 'q', 'v', 'u')  -- a requeued job's history stays
  if kept[1] then fields[#fields + 1] = 'q'; fields[#fields + 1] = kept[1] end
  if kept[2] then fields[#fields + 1] = 'v'; fields[#fields + 1] = kept[2] end
  if kept[3] then fields[#fields + 1] = 'u'; fields[#fields + 1] = kept[3] end
  redis.call('DEL', KEYS[9])
  redis.call('HSET', KEYS[9], unpack(fields))
  redis.call('PEXPIRE', KEYS[9], tonumber(ARGV[4]))
end
unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
redis.call('SADD', KEYS[5], id)
redis.call('ZADD', KEYS[8], now_ms(), id)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[6], id, ARGV[3]) end
redis.call('ZREM', KEYS[7], id)
return 1
