-- wrk script: a different bearer token on every request, from a file of tokens (one a line).
-- Arguments after the URL: FILE START THREADS. Thread t (0-based) sends the tokens at global
-- positions START + t, START + t + THREADS, ... (so no two threads share one), wrapping around at
-- the end of the file. done() prints run.sh's result line and one BENCH_TOKENS line: requests sent,
-- how many of them reused a token (position past the end of the file), and the first position a
-- next run should start at, so the measurement does not reuse the warm-up's tokens.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or ""
dofile(here .. "report.lua")
local report_done = done

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- Per thread (globals, so that done() can read them with thread:get).
sent, reused, start, stride, pool = 0, 0, 0, 1, 0
local tokens, head

function init(args)
  local file = args[1]
  start, stride = tonumber(args[2]) or 0, tonumber(args[3]) or 1
  tokens = {}
  for line in io.lines(file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  pool = #tokens
  assert(pool > 0, "no tokens in " .. file)
  -- The request without its blank line, so each request is one concatenation.
  head = wrk.format():sub(1, -3) .. "Authorization: Bearer "
end

function request()
  if not tokens then return wrk.format() end -- wrk checks the request shape before init runs
  local position = start + id + sent * stride
  sent = sent + 1
  if position >= pool then reused = reused + 1 end
  return head .. tokens[position % pool + 1] .. "\r\n\r\n"
end

done = function(summary, latency, requests)
  report_done(summary, latency, requests)
  local total, again, most, first, width, size = 0, 0, 0, 0, 1, 0
  for _, thread in ipairs(threads) do
    local n = thread:get("sent")
    total, again = total + n, again + thread:get("reused")
    most = math.max(most, n)
    first, width, size = thread:get("start"), thread:get("stride"), thread:get("pool")
  end
  io.write(string.format("BENCH_TOKENS sent=%d reused=%d next=%d pool=%d\n",
    total, again, first + most * width, size))
end
