-- queue_put: add an item to a queue (normal lane at the left, priority lane at the right).
-- KEYS[1] feed.config:<f>     HASH config (field type)
-- KEYS[2] feed.ids:<f>        LIST pending ids; consumers pop from the right
-- KEYS[3] feed.items:<f>      HASH id -> item
-- KEYS[4] feed.publishes:<f>  counter
-- KEYS[5] feed.wake:<f>       LIST wake-up markers for blocked consumers (taskpipe extension)
-- ARGV[1] id  ARGV[2] item  ARGV[3] '1' priority (RPUSH) or '0' normal (LPUSH)
-- ARGV[4] expected type ('queue')  ARGV[5] wake list TTL in seconds
-- Returns: {1}, or {0, 'nofeed'} when the config is gone or has another type (nothing written).
-- Events: none on pub/sub (Thoonk v1 queues publish nothing). One marker is pushed on the wake
--   list (capped at 64, with a TTL so a deleted queue leaves nothing behind for long).
--@include _wake.lua
if redis.call('HGET', KEYS[1], 'type') ~= ARGV[4] then
  return {0, 'nofeed'}
end
if ARGV[3] == '1' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
else
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[4])
push_wake_markers(KEYS[5], 1)
redis.call('EXPIRE', KEYS[5], ARGV[5])
return {1}
