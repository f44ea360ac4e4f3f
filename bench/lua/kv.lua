-- wrk script for twisted_kv's HTTP API: the workloads of workload.lua as
-- GET and PUT /kv/KEY.
--
--   wrk -s bench/lua/kv.lua URL -- WORKLOAD TAG KEYS

local VALUE = string.rep("x", 100)
local PUT_HEADERS = {["Content-Type"] = "application/octet-stream"}

function get_request(key)
  return wrk.format("GET", "/kv/" .. key)
end

function put_request(key)
  return wrk.format("PUT", "/kv/" .. key, PUT_HEADERS, VALUE)
end

dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "workload.lua")
