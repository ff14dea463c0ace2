-- config_update_cluster: the Redis Cluster form of config_update: change fields of an existing
-- object's config.
-- The object exists when its config has a type (the `feeds` SET is in another slot; see
-- config_create.lua). One slot, so it runs as one atomic step on a cluster.
-- KEYS[1] feed.config:<f>  HASH config
-- ARGV[1] name  ARGV[2] instance id  ARGV[3] conffeed channel
-- ARGV[4..] field, value pairs; an empty value deletes the field (type cannot be changed here)
-- Returns: 1, or 0 if the object does not exist (nothing written).
-- Events: conffeed "<f>\0<instance>".
--@include _config_fields.lua
if redis.call('HEXISTS', KEYS[1], 'type') == 0 then
  return 0
end
apply_config_fields(KEYS[1], 4)
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
return 1
