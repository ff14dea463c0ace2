-- sorted_feed_insert: add a new item to a sorted feed at the end, the beginning, or next to an item.
-- KEYS[1] feed.config:<f>     HASH config (field type)
-- KEYS[2] feed.ids:<f>        LIST the ordering
-- KEYS[3] feed.items:<f>      HASH id -> item
-- KEYS[4] feed.idincr:<f>     counter: source of the integer ids
-- KEYS[5] feed.publishes:<f>  counter
-- ARGV[1] where: 'end' | 'begin' | 'before' | 'after'  ARGV[2] pivot id (before/after only)
-- ARGV[3] item  ARGV[4] feed.publish:<f> channel  ARGV[5] feed.position:<f> channel
-- ARGV[6] expected type ('sorted_feed')
-- Returns: {1, id}; {0, 'nofeed'} when the config is gone or has another type; {0, 'missing'}
--   when the pivot is not in the feed. Nothing is written (not even INCR idincr) on a refusal.
-- Events: feed.publish "<id>\0<item>", then feed.position "<id>\0<relpos>" with relpos ':end',
--   'begin:', ':<pivot>' (before) or '<pivot>:' (after).
-- The id is INCR feed.idincr:<f>; ids already taken (e.g. supplied by a legacy client) are
--   skipped, at most 100 times.
if redis.call('HGET', KEYS[1], 'type') ~= ARGV[6] then
  return {0, 'nofeed'}
end
local where, pivot = ARGV[1], ARGV[2]
if where == 'before' or where == 'after' then
  if redis.call('HEXISTS', KEYS[3], pivot) == 0 or not redis.call('LPOS', KEYS[2], pivot) then
    return {0, 'missing'}
  end
end
local id
for _ = 1, 100 do
  id = tostring(redis.call('INCR', KEYS[4]))
  if redis.call('HEXISTS', KEYS[3], id) == 0 then
    break
  end
end
local relpos
if where == 'end' then
  redis.call('RPUSH', KEYS[2], id)
  relpos = ':end'
elseif where == 'begin' then
  redis.call('LPUSH', KEYS[2], id)
  relpos = 'begin:'
elseif where == 'before' then
  redis.call('LINSERT', KEYS[2], 'BEFORE', pivot, id)
  relpos = ':' .. pivot
else
  redis.call('LINSERT', KEYS[2], 'AFTER', pivot, id)
  relpos = pivot .. ':'
end
redis.call('HSET', KEYS[3], id, ARGV[3])
redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[4], id .. '\0' .. ARGV[3])
redis.call('PUBLISH', ARGV[5], id .. '\0' .. relpos)
return {1, id}
