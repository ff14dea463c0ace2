-- sorted_feed_edit: replace the item of an existing sorted-feed id; its position is unchanged.
-- KEYS[1] feed.items:<f>      HASH id -> item
-- KEYS[2] feed.publishes:<f>  counter
-- ARGV[1] id  ARGV[2] item  ARGV[3] feed.publish:<f> channel
-- Returns: {1}, or {0, 'missing'} when the id has no item (nothing written).
-- Events: feed.publish "<id>\0<item>". The edit goes out on feed.publish, as thoonk.py 1.0 does
--   (thoonk.js 0.5 used feed.edit, the Gen 2 deck scripts feed.position): a listener tells an
--   edit from a new item by whether it already knows the id.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {0, 'missing'}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
return {1}
