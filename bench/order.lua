-- POST /api/v1/orders, each request a new order for one of the given items, picked at
-- random; the app enqueues its confirmation job in the order's transaction,
-- bench/jobless.py does not.
-- Usage: wrk ... -s order.lua URL -- <run-prefix> <item id>...
dofile("/bench/report.lua")
local items = {}

function init(args)
  for i = 2, #args do
    items[#items + 1] = args[i]
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local body = string.format('{"item_id":"%s","quantity":1}', items[math.random(#items)])
  return wrk.format(nil, nil, nil, body)
end
