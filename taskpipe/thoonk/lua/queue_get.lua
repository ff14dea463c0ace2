-- queue_get: take the next item off a queue: pop the id and delete its item in one step.
-- KEYS[1] feed.ids:<f>    LIST pending ids (pop from the right)
-- KEYS[2] feed.items:<f>  HASH id -> item
-- ARGV[1] most ids without an item to skip in this call (bounds the loop)
-- Returns: {1, id, item}; {0} when the queue is empty; {2} when ARGV[1] ids without an item
--   were dropped and more remain (call again).
-- Events: none.
-- An id whose item is missing (left by a legacy consumer that crashed between its BRPOP and HDEL,
--   or a retracted id) is dropped.
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('RPOP', KEYS[1])
  if not id then
    return {0}
  end
  local item = redis.call('HGET', KEYS[2], id)
  if item then
    redis.call('HDEL', KEYS[2], id)
    return {1, id, item}
  end
end
if redis.call('LLEN', KEYS[1]) == 0 then
  return {0}
end
return {2}
