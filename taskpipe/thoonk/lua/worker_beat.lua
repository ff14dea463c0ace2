-- worker_beat: refresh a worker's entry in the worker registry, in server time.
-- KEYS[1] taskpipe.workers  ZSET worker -> heartbeat deadline ms
-- ARGV[1] worker name  ARGV[2] ttl ms (the entry counts as live until now + ttl)
-- Entries whose deadline has passed are dropped.
-- Returns: the server time in ms.
-- Events: none.
--@include _now.lua
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return now
