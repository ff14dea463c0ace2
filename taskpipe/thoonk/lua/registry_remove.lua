-- registry_remove: Redis Cluster step 1 of delete: unregister a name from the `feeds` SET.
-- Delete runs create's steps in reverse: this script, then one multi-key DEL of the object's
-- keys (all in the channel's slot). Idempotent.
-- KEYS[1] feeds
-- ARGV[1] name  ARGV[2] instance id  ARGV[3] delfeed channel
-- Returns: 1 if the name was removed, 0 if it was not registered.
-- Events: delfeed "<f>\0<instance>" (only when removed).
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
return 1
