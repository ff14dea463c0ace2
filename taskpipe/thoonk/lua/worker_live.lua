-- worker_live: the names of the live workers (deadline not passed, in server time).
-- KEYS[1] taskpipe.workers  ZSET worker -> heartbeat deadline ms
-- ARGV: none.
-- Returns: {server time ms, {names...}}
-- Events: none.
--@include _now.lua
local now = now_ms()
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
