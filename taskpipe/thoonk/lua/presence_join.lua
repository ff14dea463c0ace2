-- presence_join: a worker holding a subscription on its alive channel joins the presence set
-- (the reaper then returns its claims within a grace once that subscription is gone).
-- KEYS[1] taskpipe.presence  ZSET worker -> 0 while seen alive, else ms it was first seen gone
-- ARGV[1] worker name  ARGV[2] ttl ms (the set expires this long after the last join; entries
--         of workers gone longer than this are dropped)
-- Returns: the server time in ms.
-- Events: none.
--@include _now.lua
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 1, now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return now
