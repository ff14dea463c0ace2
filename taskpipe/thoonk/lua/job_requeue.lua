-- job_requeue: publish an ended job again from its record (same id, its payload as published,
-- attempts and cancels reset); the record is kept (history), with requeues (q) + 1.
-- KEYS[1] feed.items:<f>  KEYS[2] feed.ids:<f>  KEYS[3] feed.published:<f>  KEYS[4] feed.publishes:<f>
-- KEYS[5] feed.wake:<f>  KEYS[6] feed.finished:<f>  KEYS[7] feed.result:<f>:<id>
-- KEYS[8] feed.record:<f>:<id>  KEYS[9] feed.failedidx:<f>  KEYS[10] feed.attempts:<f>
-- KEYS[11] feed.cancelled:<f>  KEYS[12] feed.prio:<f>  KEYS[13] feed.flow:<f>
-- KEYS[last] feed.labelidx:<f>:<label> (the index of the label the caller read: KEYS[#KEYS])
-- ARGV[1] id  ARGV[2] outcomes allowed, comma-separated (e.g. 'failed,timeout')
-- ARGV[3] the label the caller read from the record
-- ARGV[4] (optional) the payload to publish instead of the record's ('' or absent: the record's;
--         the caller's rewrite of the payload it read, e.g. without a deadline that has passed)
-- ARGV[5] (optional) numeric priority 0..9 ('' = none)  ARGV[6] (optional) the flow spec's fields
--         after the score ('' = none), as job_put_flow's ARGV[6] / ARGV[7]: a job's flow spec is
--         dropped once it ends, so the caller gives its task's again (caps, rate limits, order)
-- Returns: {code, outcome}: 1 requeued; 0 no record; -1 the job exists (not ended);
--          -2 its outcome is not allowed (nothing changed); -3 the record kept no payload (it was
--          over the size cap); -4 the record's label changed since the caller read it.
-- The abort of an aborted job (feed.aborted:<f>:<id>) stays: it names the claim it ended, so it
-- still stops that run's task if it has not looked yet, and not the requeued run.
-- Events: none (a requeued job is put like a new one: wake-up markers for blocked workers).
--@include _now.lua
--@include _wake.lua
--@include _flow_spec.lua
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {-1, ''} end
local r = redis.call('HMGET', KEYS[8], 'o', 'i', 'l')  -- fields: see _record.lua
local outcome, item, label = r[1], r[2], r[3]
if not outcome then return {0, ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. outcome .. ',', 1, true) then return {-2, outcome} end
if not item then return {-3, outcome} end
if (label or '') ~= ARGV[3] then return {-4, outcome} end
if ARGV[4] and ARGV[4] ~= '' then item = ARGV[4] end
local now = now_ms()
redis.call('HSET', KEYS[1], id, item)
redis.call('ZADD', KEYS[3], now, id)
local seq = redis.call('INCR', KEYS[4])  -- this put's publish sequence
local nprio, rest = ARGV[5] or '', ARGV[6] or ''
local score = put_flow_spec(KEYS[13], id, nprio, rest, seq)
if score ~= '' then redis.call('ZADD', KEYS[12], score, id) else redis.call('LPUSH', KEYS[2], id) end
redis.call('ZREM', KEYS[6], id)
redis.call('DEL', KEYS[7])
redis.call('ZREM', KEYS[9], id)
redis.call('HDEL', KEYS[10], id)
redis.call('HDEL', KEYS[11], id)
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[#KEYS], id) end
redis.call('HINCRBY', KEYS[8], 'q', 1)  -- requeues
redis.call('HSET', KEYS[8], 'u', now, 'v', outcome)  -- requeued at, previous outcome
push_wake_markers(KEYS[5], 1)
return {1, outcome}
