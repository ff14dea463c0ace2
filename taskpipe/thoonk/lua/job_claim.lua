-- job_claim: claim up to N available jobs, walking channels in strict order.
-- For each channel (12 keys each, channel c at KEYS[12*(c-1)+1 ..]):
--   +1 feed.ids:<f>  +2 feed.items:<f>  +3 feed.claimed:<f>  +4 feed.leases:<f>
--   +5 feed.delayed:<f>  +6 feed.urgent:<f>  +7 feed.cancelled:<f>  +8 feed.config:<f>
--   +9 feed.tokens:<f>  +10 feed.workers:<f>  +11 feed.fence:<f>  +12 feed.attempts:<f>
-- ARGV[1] max jobs to claim (<= 1000)  ARGV[2] lease ms  ARGV[3] worker name
-- ARGV[4] promote limit per channel (due delayed jobs moved to available first)
-- Semantics: a paused channel (config paused=1) is skipped. Nothing is taken from channel c+1
--   while channel c still has an available job. Each claim, atomically: RPOP the id, ZADD claimed
--   (claim ms), ZADD leases (deadline), a new fencing token (INCR fence) in tokens, the worker
--   name in workers. Ids with no item (retracted) or already claimed are dropped.
-- Returns: {now_ms, next_due_ms or -1, {channel_index, id, item, cancel_count, token, attempts}...}
-- Events: none.
--@include _now.lua
--@include _promote.lua
local want = math.min(tonumber(ARGV[1]), 1000)
local lease = tonumber(ARGV[2])
local worker = ARGV[3]
local plimit = tonumber(ARGV[4])
local now = now_ms()
local now_s = math.floor(now / 1000)
local out = {now, -1}
local got = 0
local pops_left = want * 4 + 64
local nch = #KEYS / 12
local next_due = -1
for c = 1, nch do
  local b = 12 * (c - 1)
  local k_ids, k_items, k_claimed, k_leases = KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4]
  local k_delayed, k_urgent = KEYS[b + 5], KEYS[b + 6]
  if redis.call('HGET', KEYS[b + 8], 'paused') ~= '1' then
    if plimit > 0 then promote(k_delayed, k_urgent, k_items, k_ids, now, plimit) end
    while got < want and pops_left > 0 do
      local id = redis.call('RPOP', k_ids)
      if not id then break end
      pops_left = pops_left - 1
      if redis.call('HEXISTS', k_items, id) == 1 and not redis.call('ZSCORE', k_claimed, id) then
        redis.call('ZADD', k_claimed, now, id)
        redis.call('ZADD', k_leases, now + lease, id)
        -- the server second makes tokens unique even if Redis lost the counter (restart empty)
        local token = redis.call('INCR', KEYS[b + 11]) .. ':' .. now_s
        redis.call('HSET', KEYS[b + 9], id, token)
        redis.call('HSET', KEYS[b + 10], id, worker)
        local item = redis.call('HGET', k_items, id)
        local cc = tonumber(redis.call('HGET', KEYS[b + 7], id) or '0')
        local att = tonumber(redis.call('HGET', KEYS[b + 12], id) or '0')
        got = got + 1
        out[got + 2] = {c, id, item, cc, token, att}
      end
    end
    local first = redis.call('ZRANGE', k_delayed, 0, 0, 'WITHSCORES')
    if first[2] then
      local due = tonumber(first[2])
      if next_due < 0 or due < next_due then next_due = due end
    end
  end
end
out[2] = next_due
return out
