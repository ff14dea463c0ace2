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
-- Cost (the success path runs once per finished job): every read is one command per batch
-- (record_read_all); per job only HSET and PEXPIRE, with the HSET arguments built in one reused
-- table (no closure, no table per job). A record that already exists (a requeued job, a retried
-- one with an 'e' or a stall record) is found by one EXISTS over the batch's record keys; only
-- when that counts any is each job's key checked before it is rewritten.
-- record_section(n, keys, argv): the calling script's keys and arguments are passed in (a helper
-- reads no KEYS of its own); nil when the call has no record section.
local function record_section(n, keys, argv)
  if argv[#argv] ~= '\0record' then return nil end
  local a = #argv - 2 - 4 * n
  return {keys = keys, argv = argv, a = a, k = #keys - 2 * n - 1, cap = tonumber(argv[a]),
          keep = tonumber(argv[a + 1]), stats = {}, fields = {}, old = 0}
end

-- read, into rec, what the finishing jobs are about to lose (call before their bookkeeping is
-- deleted): one command per key for the whole batch. done[j] is the id of job finished[j];
-- started[j] its claim score, which the caller already read (its owner check). rec.old: how
-- many of the records about to be written exist already (0 in the common case).
local function record_read_all(rec, done, finished, started, k_items, k_cancelled, k_attempts,
                               k_published, k_workers)
  rec.items = redis.call('HMGET', k_items, unpack(done))
  rec.cancels = redis.call('HMGET', k_cancelled, unpack(done))
  rec.attempts = redis.call('HMGET', k_attempts, unpack(done))
  rec.published = redis.call('ZMSCORE', k_published, unpack(done))
  rec.workers = redis.call('HMGET', k_workers, unpack(done))
  rec.started = started
  local keys = {}
  for _, i in ipairs(finished) do
    if rec.argv[rec.a + 2 + 4 * (i - 1)] ~= '' then keys[#keys + 1] = rec.keys[rec.k + 2 * i] end
  end
  if #keys > 0 then rec.old = redis.call('EXISTS', unpack(keys)) end
end

-- keep the record of job i (the j-th finished one, read by record_read_all) for ttl ms (> 0);
-- index it. now and ttl are strings (no number formatting per job in redis.call).
local function record_write(rec, j, i, id, now, ttl)
  local argv, b = rec.argv, rec.a + 2 + 4 * (i - 1)
  local outcome = argv[b]
  if outcome == '' then return end
  local label, code, runtime = argv[b + 1], argv[b + 2], argv[b + 3]
  local key = rec.keys[rec.k + 2 * i]
  local f = rec.fields  -- the HSET arguments, f[1..m] (reused: no table per job)
  local runs = rec.attempts[j]
  runs = runs and tostring(tonumber(runs) + 1) or '1'  -- this run included
  f[1], f[2], f[3], f[4], f[5], f[6] = 'o', outcome, 'a', runs, 'f', now
  local m = 6
  if label ~= '' then f[m + 1], f[m + 2], m = 'l', label, m + 2 end
  local item = rec.items[j] or ''
  if #item > rec.cap then
    f[m + 1], f[m + 2], m = 'n', tostring(#item), m + 2
  elseif item ~= '' then
    f[m + 1], f[m + 2], m = 'i', item, m + 2
  end
  local v = rec.cancels[j]
  if v and v ~= '' and v ~= '0' then f[m + 1], f[m + 2], m = 'c', v, m + 2 end
  v = rec.workers[j]
  if v and v ~= '' then f[m + 1], f[m + 2], m = 'w', v, m + 2 end
  v = rec.published[j]
  if v then f[m + 1], f[m + 2], m = 'p', v, m + 2 end
  v = rec.started[j]
  if v then f[m + 1], f[m + 2], m = 's', v, m + 2 end
  if runtime ~= '' then f[m + 1], f[m + 2], m = 'r', runtime, m + 2 end
  if code ~= '' then f[m + 1], f[m + 2], m = 'x', code, m + 2 end
  if rec.old > 0 and redis.call('EXISTS', key) == 1 then
    -- a requeued (or retried, or stalled) job: keep its requeue history, drop the rest
    local kept = redis.call('HMGET', key, 'q', 'v', 'u')
    if kept[1] and kept[1] ~= '' then f[m + 1], f[m + 2], m = 'q', kept[1], m + 2 end
    if kept[2] and kept[2] ~= '' then f[m + 1], f[m + 2], m = 'v', kept[2], m + 2 end
    if kept[3] and kept[3] ~= '' then f[m + 1], f[m + 2], m = 'u', kept[3], m + 2 end
    redis.call('DEL', key)
  end
  redis.call('HSET', key, unpack(f, 1, m))
  redis.call('PEXPIRE', key, ttl)
  if label ~= '' then  -- lifetime counters, one HINCRBY per label and outcome (record_trim)
    local by_label = rec.stats[outcome]
    if not by_label then by_label = {}; rec.stats[outcome] = by_label end
    by_label[label] = (by_label[label] or 0) + 1
  end
  if outcome ~= 'succeeded' then
    redis.call('ZADD', rec.keys[rec.k], now, id)
    if label ~= '' then
      -- the per-label index holds the jobs that did not succeed (what an operator looks for and
      -- requeues by task); successes are found through feed.finished (memory: docs/history.md).
      -- It lives while its task keeps failing: it expires one retention after the last failure.
      local lidx = rec.keys[rec.k + 1 + 2 * i]
      redis.call('ZADD', lidx, now, id)
      redis.call('PEXPIRE', lidx, argv[rec.a + 1])
      local old = redis.call('ZRANGEBYSCORE', lidx, '-inf', tonumber(now) - rec.keep, 'LIMIT', 0, 100)
      if #old > 0 then redis.call('ZREM', lidx, unpack(old)) end
    end
  end
end

-- once per call, after the records: the per-label counters, and the failed index trimmed by age
local function record_trim(rec, now)
  for outcome, by_label in pairs(rec.stats) do
    for label, count in pairs(by_label) do
      redis.call('HINCRBY', rec.keys[rec.k + 1], label .. '\0' .. outcome, count)
    end
  end
  local old = redis.call('ZRANGEBYSCORE', rec.keys[rec.k], '-inf', now - rec.keep, 'LIMIT', 0, 100)
  if #old > 0 then redis.call('ZREM', rec.keys[rec.k], unpack(old)) end
end
