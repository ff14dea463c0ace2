-- job_reap_stall: stall the jobs job_reap found past max cancels (their lease lost too many
-- times), each with its record, in one step (docs/history.md): the reaper's second call.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.cancelled:<f>  KEYS[6] feed.stalled:<f>  KEYS[7] feed.reasons:<f>
-- KEYS[8] feed.published:<f>  KEYS[9] feed.stalledat:<f>  ZSET id -> stall ms
-- KEYS[10...] feed.record:<f>:<id> per job, in ARGV order
-- ARGV[1] record ttl ms (<= 0: no record kept)
-- ARGV[2...] per job, 4 values: id, token (as job_reap returned it), why ('lease expired' or
--         'worker died'), label (task name or '')
-- A job is stalled only if it is still claimed under that token and, for 'lease expired', its
-- lease is still past (a job finished, released or renewed since the reap runs on: skipped).
-- Its cancel count goes up by one (the lost lease), its reason is 'worker_lost: <why> <count>
-- times', and its record (fields as in _record.lua) is o 'stalled', f the stall ms, l, w, s
-- (claimed), p, c; the q/v/u requeue history of an earlier record is kept. At most 1000 jobs.
-- Returns: the ids stalled, in order.
-- Events: none.
--@include _now.lua
--@include _owner.lua
local ttl = tonumber(ARGV[1])
local n = math.min((#ARGV - 1) / 4, #KEYS - 9, 1000)
local now = now_ms()
local now_str = tostring(now)
local stalled = {}
for i = 1, n do
  local a = 2 + 4 * (i - 1)
  local id, token, why, label = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ok = check_owner(KEYS[1], KEYS[3], id, token) == 1
  if ok and why ~= 'worker died' then
    local lease = redis.call('ZSCORE', KEYS[2], id)
    ok = lease and tonumber(lease) <= now
  end
  if ok then
    local count = redis.call('HINCRBY', KEYS[5], id, 1)
    if ttl > 0 then  -- the record: its facts read before unclaim drops them
      local key = KEYS[9 + i]
      local fields = {'o', 'stalled', 'f', now_str, 'c', count}
      local facts = {'l', label, 'w', redis.call('HGET', KEYS[4], id),
                     's', redis.call('ZSCORE', KEYS[1], id), 'p', redis.call('ZSCORE', KEYS[8], id)}
      local kept = redis.call('HMGET', key, 'q', 'v', 'u')
      facts[#facts + 1], facts[#facts + 2] = 'q', kept[1]
      facts[#facts + 1], facts[#facts + 2] = 'v', kept[2]
      facts[#facts + 1], facts[#facts + 2] = 'u', kept[3]
      for f = 1, #facts, 2 do
        local value = facts[f + 1]
        if value and value ~= '' then
          fields[#fields + 1] = facts[f]
          fields[#fields + 1] = value
        end
      end
      redis.call('DEL', key)
      redis.call('HSET', key, unpack(fields))
      redis.call('PEXPIRE', key, ARGV[1])
    end
    unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
    redis.call('SADD', KEYS[6], id)
    redis.call('ZADD', KEYS[9], now_str, id)
    redis.call('HSET', KEYS[7], id, 'worker_lost: ' .. why .. ' ' .. count .. ' times')
    redis.call('ZREM', KEYS[8], id)
    stalled[#stalled + 1] = id
  end
end
return stalled
