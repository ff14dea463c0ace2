-- delete: unregister an object and delete every key it owns.
-- KEYS[1] feeds  KEYS[2..] every key of the object (config, ids, items, counters, job extensions)
-- ARGV[1] name  ARGV[2] instance id  ARGV[3] delfeed channel
-- Returns: 1, or 0 if the object did not exist.
-- Events: delfeed "<f>\0<instance>".
-- Per-job result and log keys are not listed: they carry TTLs and expire on their own.
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
return 1
