-- wrk script: one CloudEvent per POST /v1/events, each with a new id and one
-- of 1000 subjects. Against a running `spate dev`:
--
--   wrk -t2 -c64 -d15s --latency -s bench/single-event.lua http://127.0.0.1:8080
--
-- wrk counts every answer that is not 2xx/3xx as a status error; the summary
-- line at the end prints them.
local counter = 0
local threads = 0

-- setup runs once per thread before it starts: give each its number, so
-- that ids are unique across threads.
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/cloudevents+json"

request = function()
  counter = counter + 1
  local id = string.format("bench-%d-%d", tid, counter)
  local subject = "order-" .. (counter % 1000)
  wrk.body = '{"specversion":"1.0","id":"' .. id .. '","source":"/bench","type":"shop.order.placed.v1",' ..
    '"subject":"' .. subject .. '","data":{"orderId":"' .. subject .. '","customerId":"c-1",' ..
    '"amountCents":4200,"currency":"EUR","items":[{"sku":"tea-1","quantity":2,"priceCents":2100}]}}'
  return wrk.format(nil, "/v1/events")
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d, non-2xx %d (socket errors: connect %d, read %d, write %d, timeout %d)\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
