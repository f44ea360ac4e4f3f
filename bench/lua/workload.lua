-- The workloads of kv.lua and etcd.lua, which load this file after defining
-- two globals that build the requests of their system:
--
--   get_request(key)  a read of key
--   put_request(key)  a write of a 100-byte value to key
--
--   wrk -s bench/lua/SYSTEM.lua URL -- WORKLOAD TAG KEYS
--
-- WORKLOAD  put: write bench/TAG/THREAD/N, every key new (N counts up)
--           get: read bench/pre/I, I uniform in [0, KEYS)
--           mix: 90 % reads as above, 10 % writes replacing bench/pre/I
-- TAG       keeps the keys of one run apart from those of another
-- KEYS      how many keys were preloaded as bench/pre/0 .. KEYS-1
--
-- done() prints one line, "BENCHJSON {...}", with the request count,
-- duration, latency percentiles and errors, for bench/compare.py to read.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  workload = args[1] or "put"
  tag = args[2] or "run"
  keys = tonumber(args[3] or "10000")
  math.randomseed(os.time() * 1000 + tid)
  n = 0
  prefix = "bench/" .. tag .. "/" .. tid .. "/"
  gets = {}
  puts = {}
  if workload ~= "put" then
    for i = 0, keys - 1 do
      local key = "bench/pre/" .. i
      gets[i] = get_request(key)
      puts[i] = put_request(key)
    end
  end
end

function request()
  if workload == "put" then
    n = n + 1
    return put_request(prefix .. n)
  end
  local i = math.random(0, keys - 1)
  if workload == "mix" and math.random(1, 10) == 1 then
    return puts[i]
  end
  return gets[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "non2xx": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
