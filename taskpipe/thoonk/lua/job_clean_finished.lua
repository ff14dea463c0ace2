-- job_clean_finished: forget a batch of finished jobs: their entries in the finished index and,
-- for each id not published again since (absent from feed.items:<f>), its stored result and log.
-- KEYS[1] feed.finished:<f>  KEYS[2] feed.items:<f>
-- KEYS[1+2i] feed.result:<f>:<id_i>  KEYS[2+2i] feed.log:<f>:<id_i>   (i = 1..#ARGV)
-- ARGV[1..n] the ids (at most 1000)
-- Returns: {ids whose result and log were removed} (an id published again keeps them; only its
--          stale index entry goes).
-- Events: none.
local n = #ARGV
if n > 1000 or #KEYS ~= 2 + 2 * n then
  return redis.error_reply('ERR job_clean_finished: at most 1000 ids, two keys per id')
end
local gone = {}
for i = 1, n do
  local id = ARGV[i]
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HEXISTS', KEYS[2], id) == 0 then
    redis.call('DEL', KEYS[1 + 2 * i], KEYS[2 + 2 * i])
    gone[#gone + 1] = id
  end
end
return gone
