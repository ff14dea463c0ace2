-- job_put_flow: publish one job with flow control options: a numeric priority, rate-limit and
-- concurrency groups, and deduplication (unique, unique for a window, debounce).
-- KEYS[1] feed.ids:<f>  KEYS[2] feed.items:<f>  KEYS[3] feed.published:<f>
-- KEYS[4] feed.publishes:<f>  KEYS[5] feed.delayed:<f>  KEYS[6] feed.urgent:<f>
-- KEYS[7] feed.wake:<f>  KEYS[8] feed.finished:<f>  KEYS[9] feed.result:<f>:<id>
-- KEYS[10] feed.prio:<f>  ZSET numbered available ids, score priority * 2^48 + publish sequence
-- KEYS[11] feed.flow:<f>  HASH id -> flow spec (see _flow.lua)
-- KEYS[12] feed.unique:<f>:<id> (optional: only with ARGV[8]; <id> here is the dedup key)
--   STRING, the id of the job holding the dedup key
-- ARGV[1] id  ARGV[2] item  ARGV[3] Thoonk priority ('1' head of the list, '0')
-- ARGV[4] delay ms  ARGV[5] eta ms (absolute, '0' = none)
-- ARGV[6] numeric priority 0..9 ('' = none: the job goes to the list like job_put)
-- ARGV[7] the flow spec's fields after the score: rate group \0 interval \0 burst \0
--         concurrency group \0 cap ('' = none of them)
-- ARGV[8] dedup mode: '' none, 'unique' (while the holding job is unfinished; the key expires
--         after ARGV[9] ms), 'window' (for ARGV[9] ms after the first publish), 'debounce'
--         (a publish while the holding job is still delayed replaces its item and pushes its
--         due time to now + ARGV[9] ms; the job is delayed by ARGV[9] ms when new)
-- ARGV[9] dedup window ms
-- Returns: {code, id}: 1 published (id = ARGV[1]), 0 an item with that id already exists
--          (nothing written), 2 deduplicated (nothing written; id = the holding job),
--          3 debounced (the holding job's item and due time replaced; id = the holding job).
-- Events: none (the v1 contract publishes no event on job put).
--@include _now.lua
--@include _put.lua
--@include _wake.lua
--@include _flow_spec.lua
local id, item, prio = ARGV[1], ARGV[2], ARGV[3]
local delay, eta = tonumber(ARGV[4]), tonumber(ARGV[5])
local nprio, rest = ARGV[6], ARGV[7]
local mode, window = ARGV[8], tonumber(ARGV[9] or '0')
local now = now_ms()
if mode ~= '' then
  local holder = redis.call('GET', KEYS[12])
  if holder then
    if mode == 'window' then return {2, holder} end
    if mode == 'unique' and redis.call('HEXISTS', KEYS[2], holder) == 1 then return {2, holder} end
    if mode == 'debounce' and redis.call('ZSCORE', KEYS[5], holder)
        and redis.call('HEXISTS', KEYS[2], holder) == 1 then
      redis.call('HSET', KEYS[2], holder, item)
      redis.call('ZADD', KEYS[5], now + window, holder)
      redis.call('PEXPIRE', KEYS[12], window + 60000)
      local old = redis.call('HGET', KEYS[11], holder)
      if old or nprio ~= '' or rest ~= '' then
        local score = ''
        if old then score = string.match(old, '^([^%z]*)') or '' end
        redis.call('HSET', KEYS[11], holder, score .. '\0' .. rest)
      end
      return {3, holder}
    end
  end
end
if not put_job_record(KEYS[2], KEYS[3], KEYS[4], KEYS[8], KEYS[9], now, id, item) then
  return {0, id}
end
local seq = tonumber(redis.call('GET', KEYS[4]))  -- this publish's sequence (INCRed just now)
if mode == 'debounce' and delay < window then delay = window end
local due = 0
if eta > 0 then due = eta elseif delay > 0 then due = now + delay end
local score = put_flow_spec(KEYS[11], id, nprio, rest, seq)
if due > now then
  redis.call('ZADD', KEYS[5], due, id)
  if prio == '1' then redis.call('SADD', KEYS[6], id) end
elseif score ~= '' then
  redis.call('ZADD', KEYS[10], score, id)
elseif prio == '1' then
  redis.call('RPUSH', KEYS[1], id)
else
  redis.call('LPUSH', KEYS[1], id)
end
if mode == 'unique' or mode == 'window' then
  redis.call('SET', KEYS[12], id, 'PX', window)
elseif mode == 'debounce' then
  redis.call('SET', KEYS[12], id, 'PX', window + 60000)
end
push_wake_markers(KEYS[7], 1)
return {1, id}
