-- job_log: append lines to a job's log (capped, with a TTL) and announce them.
-- KEYS[1] feed.log:<f>:<id>
-- ARGV[1] id  ARGV[2] max lines kept  ARGV[3] ttl ms  ARGV[4] events channel  ARGV[5..] lines (<= 1000)
-- Returns: the log length after trimming.
-- Events: feed.jobevent:<f> "log\0<id>\0<line>" per line.
local last = math.min(#ARGV, 1004)
for i = 5, last do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  redis.call('PUBLISH', ARGV[4], 'log\0' .. ARGV[1] .. '\0' .. ARGV[i])
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return redis.call('LLEN', KEYS[1])
