-- POST /api/v1/orders, each request a new order for one of the given items, picked at
-- random; the app enqueues its confirmation job in the order's transaction,
-- bench/jobless.py does not.
-- Usage: wrk ... -s order.lua URL -- <run-prefix> <item id>...
dofile("/bench/report.lua")
local threads, items = 0, {}

-- Each wrk thread has its own Lua state, and the same random sequence unless seeded.
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  for i = 2, #args do
    items[#items + 1] = args[i]
  end
  assert(#items > 0, "order.lua: no item ids given")
  math.randomseed(os.time() * 100 + thread_number)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local body = string.format('{"item_id":"%s","quantity":1}', items[math.random(#items)])
  return wrk.format(nil, nil, nil, body)
end
