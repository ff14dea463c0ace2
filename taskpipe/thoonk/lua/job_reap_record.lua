-- job_reap_record: keep the record of jobs the reaper just stalled (job_reap: lease lost past
-- max cancels), as job_stall keeps one for a job a worker stalls (docs/history.md).
-- KEYS[1] feed.stalled:<f>  KEYS[2] feed.stalledat:<f>  ZSET id -> stall ms
-- KEYS[3...] feed.record:<f>:<id> per job, in ARGV order
-- ARGV[1] record ttl ms (<= 0: nothing kept)
-- ARGV[2...] per job, 6 values: id, label (task name or ''), worker or '', claim ms or '',
--         publish ms or '', cancel count (as job_reap returned them)
-- Fields (as in _record.lua): o 'stalled', f the stall ms, l, w, s (claimed), p, c. A job no
-- longer stalled (retried or retracted since the reap) is skipped. The q/v/u requeue history of
-- an earlier record is kept. At most 1000 jobs per call.
-- Returns: the number of records written.
-- Events: none.
--@include _now.lua
local ttl = tonumber(ARGV[1])
if ttl <= 0 then return 0 end
local n = math.min((#ARGV - 1) / 6, #KEYS - 2, 1000)
local written = 0
for i = 1, n do
  local a = 2 + 6 * (i - 1)
  local id, key = ARGV[a], KEYS[2 + i]
  if redis.call('SISMEMBER', KEYS[1], id) == 1 then
    local at = redis.call('ZSCORE', KEYS[2], id) or now_ms()
    local fields = {'o', 'stalled', 'f', at}
    local function put(name, value)
      if value and value ~= '' and value ~= '0' then
        fields[#fields + 1] = name
        fields[#fields + 1] = value
      end
    end
    put('l', ARGV[a + 1])
    put('w', ARGV[a + 2])
    put('s', ARGV[a + 3])
    put('p', ARGV[a + 4])
    put('c', ARGV[a + 5])
    local kept = redis.call('HMGET', key, 'q', 'v', 'u')
    put('q', kept[1])
    put('v', kept[2])
    put('u', kept[3])
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, ttl)
    written = written + 1
  end
end
return written
