-- helper: the job record kept when a job ends (docs/history.md). A calling script that keeps
-- records takes a trailing "record section" after all of its own arguments:
--   ARGV tail: item cap (bytes), index keep ms, then per job i (1..n): outcome ('succeeded', 'failed',
--              'timeout', '' = keep no record), label (the task name), code (error code or ''),
--              run time ms ('' = unknown); then the marker '\0record' as the very last ARGV.
--   KEYS tail: feed.failedidx:<f> (ZSET id -> finish ms of failed and timed-out jobs),
--              feed.labelstats:<f> (HASH "<label>\0<outcome>" -> count), then per job i:
--              feed.record:<f>:<id_i> (HASH) and feed.labelidx:<f>:<label_i> (ZSET id -> finish
--              ms of the label's jobs that failed or timed out).
-- A record HASH, one-letter field names (memory: the record costs what its values need):
--   o outcome  l label  i item (the payload as published; absent when over the cap)
--   n item size (only when the item was not kept)  a attempts (runs, this one included)
--   c cancels (absent: 0)  w worker  p published  s started  f finished (server ms)
--   r run time ms (absent: unknown)  x error code (absent: none)
--   q requeues, v previous outcome, u requeued at ms (set by job_requeue, kept across finishes)
--   e the error of the last run while the job waits out a retry backoff (JobChannel.note_error;
--     dropped at finish: the error is then the result)
-- Empty values are not stored. It expires with the job's result (its TTL is the result's).
-- record_section(n, KEYS, ARGV): the calling script's keys and arguments are passed in (a helper
-- reads no KEYS of its own); nil when the call has no record section.
local function record_section(n, keys, argv)
  if argv[#argv] ~= '\0record' then return nil end
  return {keys = keys, argv = argv, a = #argv - 2 - 4 * n, k = #keys - 2 * n - 1,
          nkeys = 2 * n + 2, stats = {}}
end

-- read what the finishing jobs are about to lose (call before their bookkeeping is deleted):
-- one command per key for the whole batch. done[j] is the id of job finished[j]; returns the
-- snapshots by job index: {item, cancels, attempts, published, started, worker}
local function record_read_all(done, finished, k_items, k_cancelled, k_attempts, k_published,
                               k_claimed, k_workers)
  local items = redis.call('HMGET', k_items, unpack(done))
  local cancels = redis.call('HMGET', k_cancelled, unpack(done))
  local attempts = redis.call('HMGET', k_attempts, unpack(done))
  local published = redis.call('ZMSCORE', k_published, unpack(done))
  local started = redis.call('ZMSCORE', k_claimed, unpack(done))
  local workers = redis.call('HMGET', k_workers, unpack(done))
  local snaps = {}
  for j, i in ipairs(finished) do
    snaps[i] = {items[j], cancels[j], attempts[j], published[j], started[j], workers[j]}
  end
  return snaps
end

-- keep the record of job i (its snapshot from record_read_all) for ttl ms; index it.
local function record_write(rec, i, id, snap, now, ttl)
  local b = rec.a + 2 + 4 * (i - 1)
  local outcome, label, code, runtime = rec.argv[b], rec.argv[b + 1], rec.argv[b + 2], rec.argv[b + 3]
  if outcome == '' or ttl <= 0 then return end
  local cap = tonumber(rec.argv[rec.a])
  local key, lidx = rec.keys[rec.k + 2 + 2 * (i - 1)], rec.keys[rec.k + 3 + 2 * (i - 1)]
  local item = snap[1] or ''
  local fields = {'o', outcome, 'a', tonumber(snap[3] or '0') + 1, 'f', now}
  local function put(name, value)
    if value and value ~= '' then
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
  end
  put('l', label)
  if #item <= cap then put('i', item) else put('n', tostring(#item)) end
  if snap[2] ~= '0' then put('c', snap[2]) end
  put('w', snap[6])
  put('p', snap[4])
  put('s', snap[5])
  put('r', runtime)
  put('x', code)
  if redis.call('EXISTS', key) == 1 then  -- a requeued job: keep its history, drop the rest
    local kept = redis.call('HMGET', key, 'q', 'v', 'u')
    put('q', kept[1])
    put('v', kept[2])
    put('u', kept[3])
    redis.call('DEL', key)
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, ttl)
  if label ~= '' then  -- lifetime counters, one HINCRBY per label and outcome (record_trim)
    local stat = label .. '\0' .. outcome
    rec.stats[stat] = (rec.stats[stat] or 0) + 1
  end
  if outcome ~= 'succeeded' then
    redis.call('ZADD', rec.keys[rec.k], now, id)
    if label ~= '' then
      -- the per-label index holds the jobs that did not succeed (what an operator looks for and
      -- requeues by task); successes are found through feed.finished (memory: docs/history.md).
      -- It lives while its task keeps failing: it expires one retention after the last failure.
      local keep = tonumber(rec.argv[rec.a + 1])
      redis.call('ZADD', lidx, now, id)
      redis.call('PEXPIRE', lidx, keep)
      local old = redis.call('ZRANGEBYSCORE', lidx, '-inf', now - keep, 'LIMIT', 0, 100)
      if #old > 0 then redis.call('ZREM', lidx, unpack(old)) end
    end
  end
end

-- once per call, after the records: the per-label counters, and the failed index trimmed by age
local function record_trim(rec, now)
  for stat, count in pairs(rec.stats) do redis.call('HINCRBY', rec.keys[rec.k + 1], stat, count) end
  local old = redis.call('ZRANGEBYSCORE', rec.keys[rec.k], '-inf', now - tonumber(rec.argv[rec.a + 1]), 'LIMIT', 0, 100)
  if #old > 0 then redis.call('ZREM', rec.keys[rec.k], unpack(old)) end
end
