-- config_create: Redis Cluster step 1 of create: write a new object's config (one slot).
-- On a cluster the global `feeds` SET and `feed.config:<f>` live in different slots, so create
-- is two idempotent one-slot steps: this script, then registry_add.lua (SADD feeds + events).
-- KEYS[1] feed.config:<f>  HASH config
-- ARGV[1..] field, value pairs (must include type; schema is added by the caller)
-- Returns: 1 if written, 0 if the config already has a type (an existing object: nothing written).
-- Events: none (registry_add publishes newfeed/conffeed when it registers the name).
if redis.call('HEXISTS', KEYS[1], 'type') == 1 then
  return 0
end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
