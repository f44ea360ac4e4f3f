-- wrk script for etcd's HTTP JSON gateway (v3 API), the same workloads as
-- kv.lua with the same key names:
--
--   wrk -s bench/lua/etcd.lua URL -- WORKLOAD TAG KEYS
--
-- put: POST /v3/kv/put   {"key": b64(bench/TAG/THREAD/N), "value": b64(100 bytes)}
-- get: POST /v3/kv/range {"key": b64(bench/pre/I)}   (linearizable: etcd's default)
-- mix: 90 % get, 10 % put replacing bench/pre/I
--
-- done() prints "BENCHJSON {...}" like kv.lua.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local SYMBOL = {}
for i = 1, 64 do SYMBOL[i - 1] = ALPHABET:sub(i, i) end

local function b64(data)
  local out = {}
  local len = #data
  for i = 1, len, 3 do
    local a, b, c = data:byte(i, i + 2)
    local word = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = SYMBOL[math.floor(word / 262144) % 64]
    out[#out + 1] = SYMBOL[math.floor(word / 4096) % 64]
    out[#out + 1] = b and SYMBOL[math.floor(word / 64) % 64] or "="
    out[#out + 1] = c and SYMBOL[word % 64] or "="
  end
  return table.concat(out)
end

local HEADERS = {["Content-Type"] = "application/json"}
local VALUE = b64(string.rep("x", 100))

local function put_request(key)
  return wrk.format("POST", "/v3/kv/put", HEADERS,
    '{"key":"' .. b64(key) .. '","value":"' .. VALUE .. '"}')
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
      gets[i] = wrk.format("POST", "/v3/kv/range", HEADERS, '{"key":"' .. b64(key) .. '"}')
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
