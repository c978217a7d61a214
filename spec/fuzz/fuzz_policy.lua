-- spec/fuzz/fuzz_policy.lua: the policy behind fuzz_policy.c. Its results
-- are built from the fuzz input, which the harness hands over as the
-- shards of the first live machine (one byte per entry, ids m1..m4): a
-- small program whose opcodes assemble a result table of any shape, so the
-- C validation in policy.c sees valid, broken and hostile results alike.
-- The load-time self-check (other ids) gets a plain valid answer.

local huge, maxi, mini = math.huge, math.maxinteger, math.mininteger
local weird = { 0.5, 0/0, huge, -huge, maxi, mini, "1", true, false, {}, 2^53, -0.0, 1e300,
                function() end }

local function plain_allocate(machines, ctx)
  local res = {}
  for i, m in ipairs(machines) do res[m.id] = {} end
  for s = 0, ctx.shard_count - 1 do
    local list = res[machines[s % #machines + 1].id]
    list[#list + 1] = s
  end
  return res
end

local function plain_failover(dead, machines)
  local res = { [machines[1].id] = {} }
  for i, s in ipairs(dead.shards) do res[machines[1].id][i] = s end
  return res
end

-- Runs the program in prog (an array of bytes); shards are what a valid
-- result must place (every shard for allocate, the dead one's for failover).
local function build(prog, machines, shards, count, dead)
  local ids = {}
  for i, m in ipairs(machines) do ids[i] = m.id end
  if dead then ids[#ids + 1] = dead.id end
  local pc = 1
  local function byte()
    local b = prog[pc] or 0
    pc = pc + 1
    return b
  end
  local res, key, list = {}, ids[1], nil
  while pc <= #prog do
    local op = byte() % 16
    if op == 0 then -- a machine's id (the dead one's too)
      key, list = ids[byte() % #ids + 1], nil
    elseif op == 1 then -- a made-up id, maybe a real one
      key, list = "m" .. byte(), nil
    elseif op == 2 then -- a non-string key
      key, list = byte(), nil
    elseif op == 3 then
      key, list = weird[byte() % #weird + 1], nil
      if key ~= key then key = 1.5 end -- NaN cannot be a key
    elseif op == 4 then -- a new list under key
      list = {}
      res[key] = list
    elseif op == 5 then -- a shard id, maybe out of range
      if list then list[#list + 1] = byte() % (count + 3) - 1 end
    elseif op == 6 then -- an integral float
      if list then list[#list + 1] = (byte() % (count + 1)) + 0.0 end
    elseif op == 7 then
      if list then list[#list + 1] = weird[byte() % #weird + 1] end
    elseif op == 8 then -- holes, zero, negative and non-integer keys
      local k = byte() % 12
      local ks = { 0, -1, 1.5, "x", maxi }
      if list then list[k < 7 and k + 1 or ks[k - 6]] = byte() % (count + 1) end
    elseif op == 9 then -- not a list at all
      res[key] = weird[byte() % #weird + 1]
    elseif op == 10 then -- not a table at all
      return weird[byte() % #weird + 1]
    elseif op == 11 then -- everything placed, round robin over the live ones
      for i, s in ipairs(shards) do
        local id = ids[(i + byte()) % #machines + 1]
        res[id] = res[id] or {}
        local l = res[id]
        if type(l) == "table" then l[#l + 1] = s end
      end
    elseif op == 12 then -- metatables: the validator reads raw
      local target = (byte() % 2 == 0 and list) or res
      setmetatable(target, {
        __index = function() error("__index ran") end,
        __len = function() return 1000 end,
        __pairs = function() error("__pairs ran") end,
        __eq = function() return true end,
      })
    elseif op == 13 then
      error("fuzz error " .. byte())
    elseif op == 14 then -- spend some instructions
      for _ = 1, byte() * 100 do end
    else -- and some memory (the budget and the memory cap themselves are
      -- spec/policy/fixtures/bad/ cases: 10M instructions or 32 MiB per input
      -- would slow the fuzzer a hundredfold)
      res[{}] = { string.rep("x", byte() * 64) }
    end
  end
  return res
end

return {
  allocate = function(machines, ctx)
    if machines[1].id ~= "m1" then return plain_allocate(machines, ctx) end
    local shards = {}
    for s = 0, ctx.shard_count - 1 do shards[#shards + 1] = s end
    return build(machines[1].shards, machines, shards, ctx.shard_count, nil)
  end,
  failover = function(dead, machines, ctx)
    if machines[1].id ~= "m1" then return plain_failover(dead, machines) end
    return build(machines[1].shards, machines, dead.shards, ctx.shard_count, dead)
  end,
}
