-- example_spec.lua: how a user specs a custom policy (see the README,
-- "Writing a policy"). fixtures/by_cores.lua sets only ratio; allocate and
-- failover come from the default and follow it.
local H = require("policy_helpers")

local path = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") .. "/fixtures/by_cores.lua"

describe("by_cores policy", function()
  local policy = H.load_policy(path)

  it("splits by cores whatever the load", function()
    local machines = H.fleet {
      { id = "big", cores = 32, loadavg = 30 },
      { id = "small", cores = 8, loadavg = 0 },
    }
    local ctx = H.ctx(40)
    local result = policy.allocate(machines, ctx)
    assert.valid_allocation(result, machines, ctx)
    assert.same({ big = 32, small = 8 }, H.counts(result))
  end)

  it("fails a dead machine over to the largest idle standby", function()
    local machines = H.fleet {
      { id = "a", cores = 8, shards = { 0, 1 } },
      { id = "spare-1", cores = 4, standby = true },
      { id = "spare-2", cores = 16, loadavg = 12, standby = true },
    }
    local dead = H.machine { id = "b", shards = { 2, 3 } }
    local ctx = H.ctx(4)
    local result = policy.failover(dead, machines, ctx)
    assert.valid_failover(result, dead, machines, ctx)
    assert.same({ ["spare-2"] = { 2, 3 } }, result)
  end)

  it("is valid on random fleets", function()
    for seed = 1, 20 do
      local machines = H.random_fleet(12, seed)
      local ctx = H.ctx(500, 4)
      assert.valid_allocation(policy.allocate(machines, ctx), machines, ctx)
    end
  end)
end)
