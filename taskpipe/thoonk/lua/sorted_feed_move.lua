-- sorted_feed_move: move an existing item to the beginning, the end, or next to another item.
-- KEYS[1] feed.ids:<f>    LIST the ordering
-- KEYS[2] feed.items:<f>  HASH id -> item
-- ARGV[1] id  ARGV[2] where: 'end' | 'begin' | 'before' | 'after'  ARGV[3] pivot id
-- ARGV[4] relpos as given (':X', 'X:', 'begin:', ':end')  ARGV[5] feed.position:<f> channel
-- Returns: {1}; {0, 'missing'} when the id has no item; {0, 'missing_pivot'} when the pivot is
--   not in the feed; {0, 'self'} when the pivot is the id itself. Nothing changes on a refusal.
-- Events: feed.position "<id>\0<relpos>".
-- An item whose id dropped out of the ordering (thoonk.py's move-to-itself bug) is put back.
local id, where, pivot = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HEXISTS', KEYS[2], id) == 0 then
  return {0, 'missing'}
end
if where == 'before' or where == 'after' then
  if pivot == id then
    return {0, 'self'}
  end
  if redis.call('HEXISTS', KEYS[2], pivot) == 0 or not redis.call('LPOS', KEYS[1], pivot) then
    return {0, 'missing_pivot'}
  end
end
redis.call('LREM', KEYS[1], 0, id)
if where == 'end' then
  redis.call('RPUSH', KEYS[1], id)
elseif where == 'begin' then
  redis.call('LPUSH', KEYS[1], id)
elseif where == 'before' then
  redis.call('LINSERT', KEYS[1], 'BEFORE', pivot, id)
else
  redis.call('LINSERT', KEYS[1], 'AFTER', pivot, id)
end
redis.call('PUBLISH', ARGV[5], id .. '\0' .. ARGV[4])
return {1}
