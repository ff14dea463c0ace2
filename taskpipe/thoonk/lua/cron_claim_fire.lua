-- cron_claim_fire: compare-and-set one field of a hash (a cursor). The field is set to a new
-- value only if it holds the expected value, so of many callers racing to advance the same
-- cursor from X exactly one wins. Generic: this layer gives the cursor no meaning (the cron
-- scheduler uses it as "the last fire time handled", see docs/scheduling.md).
-- KEYS[1] <cursor-hash>  the hash holding the cursor (e.g. taskpipe.cron:<entry>)
-- ARGV[1] field name of the cursor
-- ARGV[2] expected current value ('' = the field is absent or empty)
-- ARGV[3] new value
-- ARGV[4..] optional field/value pairs (at most 32 pairs) written in the same atomic step,
--           only when the cursor is advanced
-- Returns: 1 if the cursor held ARGV[2] (it now holds ARGV[3] and the pairs are written),
--          0 otherwise (nothing written).
-- Events: none.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then current = '' end
if current ~= ARGV[2] then return 0 end
local extra = #ARGV - 3
if extra % 2 ~= 0 or extra > 64 then
  return redis.error_reply('ERR cron_claim_fire: field/value pairs expected (at most 32)')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
