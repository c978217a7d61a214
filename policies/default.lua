-- policies/default.lua: the default Discluster allocation and failover policy.
--
-- A policy returns a table with any of ratio(m), allocate(machines, ctx) and
-- failover(dead, machines, ctx); the master fills in what a user policy
-- leaves out from this file. The user's fields are copied over this table,
-- so the functions below call M.ratio and read M.load_floor through it: a
-- user policy that only sets `ratio` or `load_floor` changes how the
-- default allocate and failover split.
--
-- Runs in the master's sandbox and under plain lua5.4 (busted): only base,
-- string, table and math are used, captured as locals at load time so a
-- policy that reassigns a global cannot break these functions.

local M = {}

-- Loads below this count as this value, so idle machines split by cores
-- rather than by noise in near-zero load averages.
M.load_floor = 1.0

local type, error, tostring, ipairs = type, error, tostring, ipairs
local floor, huge = math.floor, math.huge
local sort, format = table.sort, string.format

local MAX_LOAD = 1e9
local MAX_CORES = 1e6

local function finite(x)
  return type(x) == "number" and x == x and x > -huge and x < huge
end

-- cores / max(loadavg, load_floor); never inf, NaN or <= 0.
function M.ratio(m)
  local cores = m.cores
  if not finite(cores) or cores < 1 then
    cores = 1
  elseif cores > MAX_CORES then
    cores = MAX_CORES
  end
  local lf = M.load_floor
  if not finite(lf) or lf <= 0 or lf > MAX_LOAD then lf = 1.0 end
  local load = m.loadavg
  if type(load) ~= "number" or load ~= load or load < lf then
    load = lf
  elseif load > MAX_LOAD then
    load = MAX_LOAD
  end
  return cores / load
end

local function checked_ratio(m)
  local r = M.ratio(m)
  if not finite(r) or r <= 0 then
    error(format("ratio(%s) returned %s; it must be a positive finite number",
                 tostring(m.id), tostring(r)), 0)
  end
  return r
end

local function by_id(a, b) return a.id < b.id end

-- A copy of machines sorted by id: every decision is made in id order, so
-- the same fleet in any order gives the same result.
local function sorted(machines)
  local list = {}
  for i, m in ipairs(machines) do list[i] = m end
  sort(list, by_id)
  return list
end

-- Splits `units` among list[i] in proportion to w[i] (largest remainder;
-- equal remainders go to the lower index, which is the lower id).
local function largest_remainder(units, list, w)
  local n, total = #list, 0
  for i = 1, n do total = total + w[i] end
  local counts, rems, order, given = {}, {}, {}, 0
  for i = 1, n do
    local q = units * w[i] / total
    local c = floor(q)
    counts[i], rems[i], order[i] = c, q - c, i
    given = given + c
  end
  sort(order, function(a, b)
    if rems[a] ~= rems[b] then return rems[a] > rems[b] end
    return a < b
  end)
  -- Rounding can leave the sum a unit off either way; correct it in order.
  local left = units - given
  while left > 0 do
    for k = 1, n do
      if left == 0 then break end
      counts[order[k]] = counts[order[k]] + 1
      left = left - 1
    end
  end
  while left < 0 do
    for k = n, 1, -1 do
      if left == 0 then break end
      local i = order[k]
      if counts[i] > 0 then
        counts[i] = counts[i] - 1
        left = left + 1
      end
    end
  end
  return counts
end

local function range(first, last)
  local t, k = {}, 0
  for s = first, last do
    k = k + 1
    t[k] = s
  end
  return t
end

-- Shard counts by largest remainder over the ratios, contiguous ranges in
-- id order. With max_concurrency > 1 the split is made in whole buckets of
-- max_concurrency shards when there are at least as many buckets as
-- machines, so each machine identifies a whole bucket at once.
function M.allocate(machines, ctx)
  local total = ctx.shard_count
  local mc = ctx.max_concurrency
  if not finite(mc) or mc < 1 then mc = 1 end
  mc = floor(mc)
  local list = sorted(machines)
  local w = {}
  for i, m in ipairs(list) do w[i] = checked_ratio(m) end
  local unit = 1
  if mc > 1 and (total + mc - 1) // mc >= #list then unit = mc end
  local counts = largest_remainder((total + unit - 1) // unit, list, w)
  local result, first = {}, 0
  for i, m in ipairs(list) do
    local last = first + counts[i] * unit - 1
    if last > total - 1 then last = total - 1 end
    result[m.id] = range(first, last)
    first = last + 1
  end
  return result
end

-- All of the dead machine's shards go to the idle standby (standby, running
-- nothing) with the highest ratio, ties by id. Without one they are split
-- between the live machines by ratio (largest remainder, contiguous in id
-- order); survivors keep what they run and only receive additions.
function M.failover(dead, machines, ctx)
  local shards = {}
  for i, s in ipairs(dead.shards or {}) do shards[i] = s end
  if #shards == 0 or #machines == 0 then return {} end
  sort(shards)
  local list = sorted(machines)
  local best, best_ratio
  for _, m in ipairs(list) do
    if m.standby and #(m.shards or {}) == 0 then
      local r = checked_ratio(m)
      if best == nil or r > best_ratio then best, best_ratio = m, r end
    end
  end
  if best then return { [best.id] = shards } end
  local w = {}
  for i, m in ipairs(list) do w[i] = checked_ratio(m) end
  local counts = largest_remainder(#shards, list, w)
  local result, k = {}, 0
  for i, m in ipairs(list) do
    if counts[i] > 0 then
      local t = {}
      for j = 1, counts[i] do t[j] = shards[k + j] end
      k = k + counts[i]
      result[m.id] = t
    end
  end
  return result
end

return M
