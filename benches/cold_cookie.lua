-- wrk: every request carries a new session cookie, so tokengate's auth cache always misses.
wrk.method = "POST"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["Cookie"] = "session=cold-" .. n .. "-" .. math.random(1, 1000000000) })
end
