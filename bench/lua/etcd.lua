-- wrk script for etcd's HTTP JSON gateway (v3 API): the workloads of
-- workload.lua, with the same key names:
--
--   wrk -s bench/lua/etcd.lua URL -- WORKLOAD TAG KEYS
--
-- get: POST /v3/kv/range {"key": b64(KEY)}   (linearizable: etcd's default)
-- put: POST /v3/kv/put   {"key": b64(KEY), "value": b64(100 bytes)}

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

function get_request(key)
  return wrk.format("POST", "/v3/kv/range", HEADERS, '{"key":"' .. b64(key) .. '"}')
end

function put_request(key)
  return wrk.format("POST", "/v3/kv/put", HEADERS,
    '{"key":"' .. b64(key) .. '","value":"' .. VALUE .. '"}')
end

dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "workload.lua")
