-- sorted_feed_retract: remove one item from a sorted feed.
-- KEYS[1] feed.ids:<f>    LIST the ordering
-- KEYS[2] feed.items:<f>  HASH id -> item
-- ARGV[1] id  ARGV[2] feed.retract:<f> channel
-- Returns: {1} when removed, {0, 'missing'} when the id is in neither key (nothing written).
-- Events: feed.retract "<id>" (only when removed).
local in_ids = redis.call('LREM', KEYS[1], 0, ARGV[1])
local in_items = redis.call('HDEL', KEYS[2], ARGV[1])
if in_ids == 0 and in_items == 0 then
  return {0, 'missing'}
end
redis.call('PUBLISH', ARGV[2], ARGV[1])
return {1}
