-- feed_publish: publish a new item to a feed (or edit an existing one), then enforce max_length.
-- KEYS[1] feed.config:<f>     HASH config (fields type, max_length)
-- KEYS[2] feed.ids:<f>        ZSET id -> publish time in ms
-- KEYS[3] feed.items:<f>      HASH id -> item
-- KEYS[4] feed.publishes:<f>  counter of publishes and edits
-- ARGV[1] id  ARGV[2] item  ARGV[3] feed.publish:<f> channel  ARGV[4] feed.edit:<f> channel
-- ARGV[5] feed.retract:<f> channel  ARGV[6] expected type ('feed')
-- ARGV[7] most evictions in this call (bounds the trim loop)
-- Returns: {1, evicted} for a new item, {2, evicted} for an edit, {0, 'nofeed'} when the config
--   is gone or has another type (nothing written).
-- Events: feed.publish "<id>\0<item>" (new) or feed.edit "<id>\0<item>" (edit), then
--   feed.retract "<old id>" for each id evicted by max_length.
--
-- Score: server TIME as ms with a microsecond fraction ("1718000000123.456"), bumped to 1 us past
--   the newest score when needed, so ZRANGE order is publish order even within one millisecond.
-- An edit gets a new score, so the edited item moves to the end of the feed, as the thoonk.py
--   documentation says and both original clients do (their ZADD rewrites the score): a mixed
--   fleet orders a feed the same way.
-- max_length: a value <= 0, unset or non-numeric means unbounded (fractions are floored). After
--   writing, the oldest ids are evicted until N remain, never the id just written; at most ARGV[7]
--   per call, so a later publish continues a trim after max_length was cut sharply.
if redis.call('HGET', KEYS[1], 'type') ~= ARGV[6] then
  return {0, 'nofeed'}
end
local id = ARGV[1]
local created = 2
if not redis.call('ZSCORE', KEYS[2], id) then
  created = 1
end
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local score = sec * 1000 + math.floor(usec / 1000) + (usec % 1000) / 1000
local text = string.format('%d.%03d', sec * 1000 + math.floor(usec / 1000), usec % 1000)
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= score then
  text = string.format('%.3f', tonumber(newest[2]) + 0.001)
end
redis.call('ZADD', KEYS[2], text, id)
redis.call('HSET', KEYS[3], id, ARGV[2])
redis.call('INCR', KEYS[4])
if created == 1 then
  redis.call('PUBLISH', ARGV[3], id .. '\0' .. ARGV[2])
else
  redis.call('PUBLISH', ARGV[4], id .. '\0' .. ARGV[2])
end

local evicted = 0
local max = tonumber(redis.call('HGET', KEYS[1], 'max_length') or '')
if max and max >= 1 then
  local over = redis.call('ZCARD', KEYS[2]) - math.floor(max)
  local limit = tonumber(ARGV[7])
  if over > limit then
    over = limit
  end
  if over > 0 then
    -- over + 1 candidates: one of the oldest may be the id just written, which is skipped
    local old = redis.call('ZRANGE', KEYS[2], 0, over)
    for i = 1, #old do
      if evicted >= over then
        break
      end
      if old[i] ~= id then
        redis.call('ZREM', KEYS[2], old[i])
        redis.call('HDEL', KEYS[3], old[i])
        redis.call('PUBLISH', ARGV[5], old[i])
        evicted = evicted + 1
      end
    end
  end
end
return {created, evicted}
