-- helper: the job record kept when a job ends (docs/history.md). A calling script that keeps
-- records takes a trailing "record section" after all of its own arguments:
--   ARGV tail: item cap (bytes), index keep ms, then per job i (1..n): outcome ('succeeded', 'failed',
--              'timeout', '' = keep no record), label (the task name), code (error code or ''),
--              run time ms ('' = unknown); then the marker '\0record' as the very last ARGV.
--   KEYS tail: feed.failedidx:<f> (ZSET id -> finish ms of failed and timed-out jobs),
--              feed.labelstats:<f> (HASH "<label>\0<outcome>" -> count), then per job i:
--              feed.record:<f>:<id_i> (HASH) and feed.labelidx:<f>:<label_i> (ZSET id -> finish ms).
-- A record HASH: outcome, label, item (the payload as published, cut at the cap), item_size,
-- attempts (runs, this one included), cancels, worker, published, started, finished (server ms),
-- runtime_ms, code (and requeues, previous: kept across a requeue). It expires with the job's result (its TTL is the result's).
local function record_section(n)
  if ARGV[#ARGV] ~= '\0record' then return nil end
  return {a = #ARGV - 2 - 4 * n, k = #KEYS - 2 * n - 1, nkeys = 2 * n + 2}
end

-- read what a finishing job is about to lose (call before its bookkeeping is deleted)
local function record_read(k_items, k_cancelled, k_attempts, k_published, k_claimed, k_workers, id)
  return {redis.call('HGET', k_items, id), redis.call('HGET', k_cancelled, id),
          redis.call('HGET', k_attempts, id), redis.call('ZSCORE', k_published, id),
          redis.call('ZSCORE', k_claimed, id), redis.call('HGET', k_workers, id)}
end

-- keep the record of job i (its snapshot from record_read) for ttl ms; index it.
local function record_write(rec, i, n, id, snap, now, ttl)
  local b = rec.a + 2 + 4 * (i - 1)
  local outcome, label, code, runtime = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  if outcome == '' or ttl <= 0 then return end
  local cap = tonumber(ARGV[rec.a])
  local key, lidx = KEYS[rec.k + 2 + 2 * (i - 1)], KEYS[rec.k + 3 + 2 * (i - 1)]
  local item = snap[1] or ''
  local fields = {'outcome', outcome, 'label', label, 'item_size', #item,
                  'attempts', tonumber(snap[3] or '0') + 1, 'cancels', snap[2] or '0',
                  'worker', snap[6] or '', 'published', snap[4] or '', 'started', snap[5] or '',
                  'finished', now, 'runtime_ms', runtime, 'code', code}
  if #item <= cap then
    fields[#fields + 1] = 'item'
    fields[#fields + 1] = item
  end
  local kept = redis.call('HMGET', key, 'requeues', 'previous')  -- history of a requeued job
  if kept[1] then
    fields[#fields + 1], fields[#fields + 2] = 'requeues', kept[1]
    fields[#fields + 1], fields[#fields + 2] = 'previous', kept[2] or ''
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, ttl)
  if outcome ~= 'succeeded' then redis.call('ZADD', KEYS[rec.k], now, id) end
  if label ~= '' then
    redis.call('ZADD', lidx, now, id)
    redis.call('HINCRBY', KEYS[rec.k + 1], label .. '\0' .. outcome, 1)
    local old = redis.call('ZRANGEBYSCORE', lidx, '-inf', now - tonumber(ARGV[rec.a + 1]), 'LIMIT', 0, 100)
    if #old > 0 then redis.call('ZREM', lidx, unpack(old)) end
  end
end

-- trim the failed index by age (bounded), once per call
local function record_trim(rec, now)
  local old = redis.call('ZRANGEBYSCORE', KEYS[rec.k], '-inf', now - tonumber(ARGV[rec.a + 1]), 'LIMIT', 0, 100)
  if #old > 0 then redis.call('ZREM', KEYS[rec.k], unpack(old)) end
end
