-- wrk script for twisted_kv's HTTP API.
--
--   wrk -s bench/lua/kv.lua URL -- WORKLOAD TAG KEYS
--
-- WORKLOAD  put: PUT /kv/bench/TAG/THREAD/N, every key new (N counts up)
--           get: GET /kv/bench/pre/I, I uniform in [0, KEYS)
--           mix: 90 % GET as above, 10 % PUT replacing /kv/bench/pre/I
-- TAG       keeps the keys of one run apart from those of another
-- KEYS      how many keys were preloaded as bench/pre/0 .. KEYS-1
--
-- Values are 100 bytes.  done() prints one line, "BENCHJSON {...}", with
-- the request count, duration, latency percentiles and errors, for
-- bench/compare.py to read.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local VALUE = string.rep("x", 100)
local PUT_HEADERS = {["Content-Type"] = "application/octet-stream"}

function init(args)
  workload = args[1] or "put"
  tag = args[2] or "run"
  keys = tonumber(args[3] or "10000")
  math.randomseed(os.time() * 1000 + tid)
  n = 0
  prefix = "/kv/bench/" .. tag .. "/" .. tid .. "/"
  gets = {}
  puts = {}
  if workload ~= "put" then
    for i = 0, keys - 1 do
      gets[i] = wrk.format("GET", "/kv/bench/pre/" .. i)
      puts[i] = wrk.format("PUT", "/kv/bench/pre/" .. i, PUT_HEADERS, VALUE)
    end
  end
end

function request()
  if workload == "put" then
    n = n + 1
    return wrk.format("PUT", prefix .. n, PUT_HEADERS, VALUE)
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
