-- policy_helpers.lua: reusable pieces for busted specs of Discluster
-- policies, the default one or your own.
--
--   local H = require("policy_helpers")   -- after --helper=.../helper.lua
--   local policy = H.load_policy("my_policy.lua")
--   local machines = H.fleet{ {id = "a", cores = 8}, {id = "b", loadavg = 3} }
--   local ctx = H.ctx(16)
--   assert.valid_allocation(policy.allocate(machines, ctx), machines, ctx)
--
-- load_policy builds the policy as the master does: policies/default.lua,
-- then your file's fields copied over it, both in one environment holding
-- what the master's sandbox holds (no io, no os.execute, no require, no
-- load; log(level, message) collects into H.logs). The validators check
-- exactly what the master checks in C before it uses a result.
-- Plain Lua 5.4; needs nothing from busted except for H.register.

local H = {}

local function here()
  local src = debug.getinfo(1, "S").source
  return src:match("^@(.*)/[^/]*$") or "."
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

-- default.lua: $DCM_POLICY_DIR, else the source tree (spec/policy/../../
-- policies), else an install tree (share/discluster/spec/../policies).
function H.default_path()
  local dir = os.getenv("DCM_POLICY_DIR")
  if dir and dir ~= "" then return dir .. "/default.lua" end
  for _, rel in ipairs { "/../../policies/default.lua", "/../policies/default.lua" } do
    local p = here() .. rel
    if exists(p) then return p end
  end
  error("policy_helpers: default.lua not found; set DCM_POLICY_DIR", 2)
end

---------------------------------------------------------------- logs

-- Every log(level, message) and print(...) of a loaded policy, in order.
H.logs = {}

function H.clear_logs()
  for i = #H.logs, 1, -1 do H.logs[i] = nil end
end

local levels = { debug = true, info = true, warn = true, error = true }

local function policy_log(level, message)
  if not levels[level] then
    error("bad argument #1 to 'log' (invalid option '" .. tostring(level) .. "')", 2)
  end
  H.logs[#H.logs + 1] = { level = level, message = tostring(message) }
end

---------------------------------------------------------------- sandbox

local function copy(t, without)
  local c = {}
  for k, v in pairs(t) do
    if k ~= without then c[k] = v end
  end
  return c
end

local base = { "assert", "error", "getmetatable", "ipairs", "next", "pairs",
  "pcall", "rawequal", "rawget", "rawlen", "rawset", "select", "tonumber",
  "tostring", "type", "warn", "_VERSION" }

-- As src/sandbox.c: no pattern functions (they can spin inside C, where the
-- instruction budget cannot reach), a plain-only find and a bounded rep.
-- (The master also charges C library calls and caps every string at 4 KiB
-- and varargs at 64; this emulation does not model those.)
local REP_MAX = 4096

local function sandbox_string()
  local s = {}
  for k, v in pairs(string) do
    if k ~= "dump" and k ~= "match" and k ~= "gmatch" and k ~= "gsub" then s[k] = v end
  end
  s.find = function(str, text, init)
    return string.find(str, text, init or 1, true)
  end
  s.rep = function(str, n, sep)
    sep = sep or ""
    if n <= 0 then return "" end
    if n > REP_MAX or (#str + #sep) > REP_MAX // n then
      error(("string.rep: result longer than %d bytes"):format(REP_MAX), 2)
    end
    return string.rep(str, n, sep)
  end
  return s
end

-- The globals a policy sees in the master, with fresh library tables so a
-- policy that changes them does not change busted's.
function H.sandbox()
  local env = {}
  for _, k in ipairs(base) do env[k] = _G[k] end
  env.string = sandbox_string()
  env.table = copy(table)
  env.math = copy(math)
  env.utf8 = copy(utf8)
  env.os = { time = os.time, clock = os.clock }
  env.log = policy_log
  env.print = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    policy_log("info", table.concat(parts, " ", 1, parts.n))
  end
  env.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed in a policy", 2)
    end
    return setmetatable(t, mt)
  end
  env._G = env
  return env
end

local function run_file(path, env)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local chunk, err = load(text, "@" .. path, "t", env)
  if not chunk then error(err, 0) end
  return H.guarded(chunk)
end

local names = { "ratio", "allocate", "failover" }

local function check_table(t, path)
  if type(t) ~= "table" then
    error(("%s returned %s, expected a table of functions"):format(path, tostring(t)), 0)
  end
  for _, k in ipairs(names) do
    local v = rawget(t, k)
    if v ~= nil and type(v) ~= "function" then
      error(("%s: field '%s' is a %s, expected a function"):format(path, k, type(v)), 0)
    end
  end
  local lf = rawget(t, "load_floor")
  if lf ~= nil and (type(lf) ~= "number" or not (lf > 0) or lf == math.huge) then
    error(("%s: load_floor must be a positive finite number"):format(path), 0)
  end
end

-- Limits like the master's for H.guarded: instructions per call, seconds
-- (of CPU time here) per call, and KiB the Lua heap may grow by during it.
H.BUDGET = 10000000
H.TIME = 1.0
H.MEMORY = 32 * 1024

-- Calls fn(...) under an instruction budget, a time budget and a memory
-- cap, like the master does. Once a budget is gone every instruction
-- raises, so a pcall inside the policy cannot swallow it.
local function guarded(fn, ...)
  local old = table.pack(debug.gethook())
  local start = collectgarbage("count")
  local left, deadline, why = H.BUDGET, os.clock() + H.TIME, nil
  local function hook()
    if debug.getinfo(2, "f").func == guarded then return end -- back out here
    if not why then
      left = left - 100
      if collectgarbage("count") - start > H.MEMORY then
        error(("memory limit of %d MiB exceeded"):format(H.MEMORY // 1024), 2)
      end
      if left > 0 and os.clock() < deadline then return end
      why = left > 0 and "time budget exceeded" or "instruction budget exceeded"
      debug.sethook(hook, "", 1)
    end
    error(why, 2)
  end
  debug.sethook(hook, "", 100)
  local res = table.pack(pcall(fn, ...))
  debug.sethook(old[1], old[2], old[3])
  if not res[1] or why then
    collectgarbage()
    error(why or res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end
H.guarded = guarded

-- The master's self-check: a small synthetic fleet every policy must
-- handle at load. Errors with the reason.
function H.self_check(policy)
  local fleet = H.fleet {
    { id = "alpha", cores = 4, loadavg = 0.5 },
    { id = "bravo", cores = 8, loadavg = 2.0 },
    { id = "charlie", cores = 2, loadavg = 0.0 },
    { id = "delta", cores = 4, loadavg = 0.1, standby = true },
  }
  for _, m in ipairs(fleet) do
    local r = H.guarded(policy.ratio, H.machine(m))
    if type(r) ~= "number" or not (r > 0) or r == math.huge then
      error(("self-check: ratio(%s) returned %s; expected a positive finite number")
        :format(m.id, tostring(r)), 0)
    end
  end
  local active = { fleet[1], fleet[2], fleet[3] }
  for _, mc in ipairs { 1, 4 } do
    local ctx = H.ctx(16, mc)
    local ok, why = H.check_allocation(H.guarded(policy.allocate, H.fleet(active), ctx), active, ctx)
    if not ok then error("self-check: " .. why, 0) end
  end
  local dead = H.machine { id = "alpha", cores = 4, loadavg = 0.5, shards = { 0, 1, 2, 3, 4, 5 } }
  for _, live in ipairs { { fleet[2], fleet[3], fleet[4] }, { fleet[2], fleet[3] } } do
    local ctx = H.ctx(16)
    local ok, why = H.check_failover(H.guarded(policy.failover, H.machine(dead), H.fleet(live), ctx),
      dead, live, ctx)
    if not ok then error("self-check: " .. why, 0) end
  end
end

-- The default policy alone, in its own environment.
function H.load_default()
  return H.load_policy(nil)
end

-- The policy the master would run for path (nil: the default alone).
-- Errors like the master's load does, self-check included. Returns the
-- policy and its globals.
function H.load_policy(path, env)
  env = env or H.sandbox()
  local dpath = H.default_path()
  local policy = run_file(dpath, env)
  check_table(policy, dpath)
  if path ~= nil then
    local user = run_file(path, env)
    check_table(user, path)
    for k, v in next, user do policy[k] = v end
  end
  for _, k in ipairs(names) do
    if type(rawget(policy, k)) ~= "function" then
      error("the policy has no " .. k .. " function", 0)
    end
  end
  H.self_check(policy)
  return policy, env
end

---------------------------------------------------------------- fleets

-- A machine as the master passes it: every field present.
function H.machine(t)
  t = t or {}
  local shards = {}
  for i, s in ipairs(t.shards or {}) do shards[i] = s end
  return {
    id = assert(t.id, "machine: id is required"),
    cores = t.cores or 4,
    loadavg = t.loadavg or 0.0,
    standby = t.standby == true,
    shards = shards,
  }
end

-- H.fleet{ {id = "a", cores = 8}, {id = "b", standby = true} }
function H.fleet(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = H.machine(t) end
  return out
end

-- n machines "m001".."m<n>" with the same cores and loadavg.
function H.uniform_fleet(n, cores, loadavg)
  local out = {}
  for i = 1, n do
    out[i] = H.machine { id = ("m%03d"):format(i), cores = cores or 4, loadavg = loadavg or 0 }
  end
  return out
end

-- A deterministic pseudo-random number generator (no global state).
function H.rng(seed)
  local x = (seed or 1) % 2147483647
  if x <= 0 then x = x + 2147483646 end
  return function(lo, hi)
    x = (x * 48271) % 2147483647
    return lo + x % (hi - lo + 1)
  end
end

-- n machines with varied cores (1-64) and loads (0-8), from seed.
function H.random_fleet(n, seed)
  local rand = H.rng(seed)
  local out = {}
  for i = 1, n do
    out[i] = H.machine {
      id = ("r%04d"):format(i),
      cores = rand(1, 64),
      loadavg = rand(0, 800) / 100,
    }
  end
  return out
end

-- A shuffled copy (Fisher-Yates with H.rng).
function H.shuffled(list, seed)
  local rand = H.rng(seed)
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  for i = #out, 2, -1 do
    local j = rand(1, i)
    out[i], out[j] = out[j], out[i]
  end
  return out
end

function H.ctx(shard_count, max_concurrency)
  return { shard_count = shard_count, max_concurrency = max_concurrency or 1 }
end

-- Copies of machines whose shards are what result gives them (to set up a
-- failover after an allocation).
function H.with_shards(machines, result)
  local out = {}
  for i, m in ipairs(machines) do
    local c = H.machine(m)
    c.shards = {}
    for k, s in ipairs(result[m.id] or {}) do c.shards[k] = s end
    table.sort(c.shards)
    out[i] = c
  end
  return out
end

-- The live machines after `dead` leaves (by id).
function H.without(machines, id)
  local out = {}
  for _, m in ipairs(machines) do
    if m.id ~= id then out[#out + 1] = m end
  end
  return out
end

function H.find(machines, id)
  for _, m in ipairs(machines) do
    if m.id == id then return m end
  end
end

---------------------------------------------------------------- results

-- {[id] = number of shards}
function H.counts(result)
  local c = {}
  for id, list in pairs(result) do c[id] = #list end
  return c
end

-- {[shard] = id}
function H.owners(result)
  local o = {}
  for id, list in pairs(result) do
    for _, s in ipairs(list) do o[s] = id end
  end
  return o
end

-- true when each machine's shards form one run and the runs follow id order.
function H.contiguous_in_id_order(result)
  local ids = {}
  for id, list in pairs(result) do
    if #list > 0 then ids[#ids + 1] = id end
  end
  table.sort(ids)
  local next_shard
  for _, id in ipairs(ids) do
    local list = {}
    for i, s in ipairs(result[id]) do list[i] = s end
    table.sort(list)
    if next_shard and list[1] ~= next_shard then return false end
    for i = 2, #list do
      if list[i] ~= list[i - 1] + 1 then return false end
    end
    next_shard = list[#list] + 1
  end
  return true
end

local function describe(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if type(v) == "number" then return tostring(v) end
  return "a " .. type(v)
end

local function sorted_keys(t)
  local keys = {}
  for k in next, t do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then
      return a < b
    end
    return type(a) < type(b)
  end)
  return keys
end

-- The master's checks of a {[id] = {shards}} result. `slots[s]` says
-- whether shard s must appear; returns true, or false and the reason.
local function check(what, result, machines, count, wanted, nwanted)
  if type(result) ~= "table" then
    return false, ("%s returned %s, expected a table {[id] = {shard, ...}}"):format(what, describe(result))
  end
  local known = {}
  for _, m in ipairs(machines) do known[m.id] = true end
  local owner, got = {}, 0
  for _, id in ipairs(sorted_keys(result)) do
    local list = result[id]
    if type(id) ~= "string" then
      return false, ("%s result has the key %s; keys must be machine ids"):format(what, describe(id))
    end
    if not known[id] then
      return false, ("%s result names unknown machine '%s'"):format(what, id)
    end
    if type(list) ~= "table" then
      return false, ("%s result for '%s' is %s, expected an array of shard ids"):format(what, id, describe(list))
    end
    local len, seen = rawlen(list), 0
    for k, s in next, list do
      if math.type(k) ~= "integer" or k < 1 or k > len then
        return false, ("%s result for '%s' is not an array (key %s)"):format(what, id, describe(k))
      end
      local n = type(s) == "number" and math.tointeger(s) or nil
      if n == nil then
        return false, ("%s result for '%s' holds %s, expected integer shard ids"):format(what, id, describe(s))
      end
      if n < 0 or n >= count then
        return false, ("%s result for '%s' holds shard %d, outside 0-%d"):format(what, id, n, count - 1)
      end
      if not wanted(n) then
        return false, ("failover result for '%s' holds shard %d, which the dead machine did not run"):format(id, n)
      end
      if owner[n] then
        return false, ("%s result gives shard %d to both '%s' and '%s'"):format(what, n, owner[n], id)
      end
      owner[n] = id
      seen = seen + 1
      got = got + 1
    end
    if seen ~= len then
      return false, ("%s result for '%s' is not an array (holes)"):format(what, id)
    end
  end
  if got ~= nwanted then
    return false, ("%s result leaves %d shard(s) out"):format(what, nwanted - got)
  end
  return true
end

-- Every shard 0..shard_count-1 exactly once, to machines in `machines`.
function H.check_allocation(result, machines, ctx)
  local count = ctx.shard_count
  return check("allocate", result, machines, count, function() return true end, count)
end

-- Exactly dead.shards, each once, to machines in `machines` (the live ones).
-- Every live machine is eligible, so with at least one the result covers
-- every shard; with none it must be empty.
function H.check_failover(result, dead, machines, ctx)
  local want = {}
  for _, s in ipairs(dead.shards or {}) do want[s] = true end
  local n = #machines == 0 and 0 or #(dead.shards or {})
  return check("failover", result, machines, ctx.shard_count, function(s) return want[s] end, n)
end

---------------------------------------------------------------- busted

-- assert.valid_allocation(result, machines, ctx)
-- assert.valid_failover(result, dead, machines, ctx)
function H.register(luassert, say)
  local function wrap(checker, nargs)
    return function(state, arguments)
      local ok, why = checker(table.unpack(arguments, 1, nargs))
      if not ok and rawget(state, "failure_message") == nil then
        rawset(state, "failure_message", why)
      end
      return ok
    end
  end
  say:set("assertion.valid_allocation.positive", "Expected a valid allocation")
  say:set("assertion.valid_allocation.negative", "Expected an invalid allocation")
  say:set("assertion.valid_failover.positive", "Expected a valid failover")
  say:set("assertion.valid_failover.negative", "Expected an invalid failover")
  luassert:register("assertion", "valid_allocation", wrap(H.check_allocation, 3),
    "assertion.valid_allocation.positive", "assertion.valid_allocation.negative")
  luassert:register("assertion", "valid_failover", wrap(H.check_failover, 4),
    "assertion.valid_failover.positive", "assertion.valid_failover.negative")
end

return H
