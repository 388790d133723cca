-- POST /api/v1/items with a name no other request of this run uses (names are unique);
-- with "keyed", each also carries an Idempotency-Key of its own (its cost on a write).
-- Usage: wrk ... -s create.lua URL -- <run-prefix> [keyed]
dofile("/bench/report.lua")
local threads, counter, prefix, keyed = 0, 0, "bench", false

-- Each wrk thread has its own Lua state: setup() numbers them from the main state,
-- thread:set() makes that number a global in the thread's state.
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  prefix = args[1] or prefix
  keyed = args[2] == "keyed"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local name = string.format("%s-%d-%d", prefix, thread_number, counter)
  if keyed then
    wrk.headers["Idempotency-Key"] = name
  end
  return wrk.format(nil, nil, nil, string.format('{"name":"%s"}', name))
end
