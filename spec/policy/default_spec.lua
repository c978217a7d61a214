-- default_spec.lua: policies/default.lua under plain lua5.4, with the same
-- environment and the same result checks as the master's sandbox.
local H = require("policy_helpers")

local function finite_positive(x)
  return type(x) == "number" and x == x and x > 0 and x < math.huge
end

describe("default policy", function()
  local P
  before_each(function()
    P = H.load_default()
  end)

  describe("ratio", function()
    it("is cores / max(loadavg, load_floor) with load_floor 1.0", function()
      assert.equal(1.0, P.load_floor)
      assert.equal(4, P.ratio(H.machine { id = "a", cores = 8, loadavg = 2 }))
      assert.equal(8, P.ratio(H.machine { id = "a", cores = 8, loadavg = 0.5 }))
      assert.equal(8, P.ratio(H.machine { id = "a", cores = 8, loadavg = 1 }))
    end)

    it("follows a changed load_floor", function()
      P.load_floor = 0.25
      assert.equal(16, P.ratio(H.machine { id = "a", cores = 4, loadavg = 0.1 }))
      assert.equal(8, P.ratio(H.machine { id = "a", cores = 4, loadavg = 0.5 }))
    end)

    it("never gives inf, NaN or <= 0", function()
      local odd = { 0, -1, -0.0, 0 / 0, math.huge, -math.huge, 1e308, "x", nil }
      for _, cores in ipairs { 0, -4, 0 / 0, math.huge, 1, 1e12 } do
        for i = 1, #odd + 1 do
          local m = { id = "a", cores = cores, loadavg = odd[i], shards = {} }
          assert.is_true(finite_positive(P.ratio(m)))
        end
      end
      for _, lf in ipairs { 0, -1, 0 / 0, math.huge, "1" } do
        P.load_floor = lf
        assert.is_true(finite_positive(P.ratio(H.machine { id = "a", loadavg = 0 })))
      end
    end)
  end)

  describe("allocate", function()
    it("splits by largest remainder, ties by id, contiguous in id order", function()
      -- ratios 4, 4, 2 of 16: 6.4, 6.4, 3.2 -> 7, 6, 3
      local machines = H.fleet {
        { id = "bravo", cores = 8, loadavg = 2 },
        { id = "alpha", cores = 4, loadavg = 0.5 },
        { id = "charlie", cores = 2, loadavg = 0 },
      }
      local ctx = H.ctx(16)
      local r = P.allocate(machines, ctx)
      assert.valid_allocation(r, machines, ctx)
      assert.same({ 0, 1, 2, 3, 4, 5, 6 }, r.alpha)
      assert.same({ 7, 8, 9, 10, 11, 12 }, r.bravo)
      assert.same({ 13, 14, 15 }, r.charlie)
    end)

    it("gives equal machines equal shares, the extra to the lower id", function()
      local machines = H.uniform_fleet(3)
      local r = P.allocate(machines, H.ctx(16))
      assert.same({ m001 = 6, m002 = 5, m003 = 5 }, H.counts(r))
    end)

    it("is the same for the same fleet in any order", function()
      local machines = H.random_fleet(40, 7)
      local ctx = H.ctx(1000)
      local want = P.allocate(machines, ctx)
      for seed = 1, 10 do
        assert.same(want, P.allocate(H.shuffled(machines, seed), ctx))
      end
    end)

    it("is valid and contiguous for many fleets", function()
      local rand = H.rng(42)
      for seed = 1, 60 do
        local machines = H.random_fleet(rand(1, 40), seed)
        local ctx = H.ctx(rand(1, 3000), ({ 1, 1, 4, 16 })[rand(1, 4)])
        local r = P.allocate(machines, ctx)
        assert.valid_allocation(r, machines, ctx)
        assert.is_true(H.contiguous_in_id_order(r))
      end
    end)

    it("gives one machine everything and leaves extra machines empty", function()
      local one = H.fleet { { id = "solo" } }
      local r = P.allocate(one, H.ctx(5))
      assert.same({ solo = { 0, 1, 2, 3, 4 } }, r)
      local many = H.uniform_fleet(10)
      local ctx = H.ctx(3)
      r = P.allocate(many, ctx)
      assert.valid_allocation(r, many, ctx)
      assert.same({ 0 }, r.m001)
      assert.same({}, r.m010)
    end)

    it("puts boundaries on multiples of max_concurrency", function()
      local machines = H.random_fleet(5, 3)
      for _, shards in ipairs { 80, 90, 160, 1000 } do
        local ctx = H.ctx(shards, 16)
        local r = P.allocate(machines, ctx)
        assert.valid_allocation(r, machines, ctx)
        for _, list in pairs(r) do
          if #list > 0 then assert.equal(0, list[1] % 16) end
        end
      end
    end)

    it("splits single shards when there are fewer buckets than machines", function()
      local machines = H.uniform_fleet(4)
      local ctx = H.ctx(32, 16)
      local r = P.allocate(machines, ctx)
      assert.valid_allocation(r, machines, ctx)
      assert.same({ m001 = 8, m002 = 8, m003 = 8, m004 = 8 }, H.counts(r))
    end)

    it("copes with zero cores and odd loads", function()
      local machines = {
        { id = "a", cores = 0, loadavg = 0, standby = false, shards = {} },
        { id = "b", cores = 4, loadavg = -2, standby = false, shards = {} },
        { id = "c", cores = 4, loadavg = 0 / 0, standby = false, shards = {} },
        { id = "d", cores = 4, loadavg = math.huge, standby = false, shards = {} },
      }
      local ctx = H.ctx(100)
      assert.valid_allocation(P.allocate(machines, ctx), machines, ctx)
    end)

    it("handles 1,000 machines and 100,000 shards", function()
      local machines = H.random_fleet(1000, 1)
      local ctx = H.ctx(100000, 16)
      assert.valid_allocation(P.allocate(machines, ctx), machines, ctx)
    end)

    it("uses a user's ratio, and names it when it misbehaves", function()
      P.ratio = function(m) return m.cores end
      local machines = H.fleet { { id = "a", cores = 1 }, { id = "b", cores = 3 } }
      assert.same({ a = 1, b = 3 }, H.counts(P.allocate(machines, H.ctx(4))))
      P.ratio = function() return 0 / 0 end
      assert.has_error(function() P.allocate(machines, H.ctx(4)) end,
        "ratio(a) returned " .. tostring(0 / 0) .. "; it must be a positive finite number")
    end)
  end)

  describe("failover", function()
    local live
    before_each(function()
      live = H.fleet {
        { id = "bravo", cores = 8, loadavg = 2, shards = { 7, 8, 9 } },
        { id = "charlie", cores = 2, loadavg = 0, shards = { 10, 11 } },
        { id = "echo", cores = 8, loadavg = 1, standby = true },
        { id = "delta", cores = 8, loadavg = 1, standby = true },
        { id = "foxtrot", cores = 2, loadavg = 0, standby = true },
      }
    end)
    local dead = H.machine { id = "alpha", shards = { 4, 0, 1, 2, 3 } }

    it("gives everything to the best idle standby, ties by id", function()
      local ctx = H.ctx(16)
      local r = P.failover(dead, live, ctx)
      assert.valid_failover(r, dead, live, ctx)
      assert.same({ delta = { 0, 1, 2, 3, 4 } }, r)
    end)

    it("treats a standby that already runs shards as a survivor", function()
      for _, m in ipairs(live) do
        if m.standby then m.shards = { 12 + #m.id } end
      end
      local ctx = H.ctx(20)
      local r = P.failover(dead, live, ctx)
      assert.valid_failover(r, dead, live, ctx)
      local receivers = 0
      for _ in pairs(r) do receivers = receivers + 1 end
      assert.is_true(receivers > 1)
    end)

    it("splits between survivors by ratio, who keep what they run", function()
      local survivors = { live[1], live[2] }
      local ctx = H.ctx(16)
      local r = P.failover(dead, survivors, ctx)
      assert.valid_failover(r, dead, survivors, ctx)
      -- ratios 4 and 2 over 5 shards: 3.33, 1.67 -> 3, 2
      assert.same({ bravo = { 0, 1, 2 }, charlie = { 3, 4 } }, r)
    end)

    it("returns nothing when no machine is live or nothing ran", function()
      local ctx = H.ctx(16)
      assert.same({}, P.failover(dead, {}, ctx))
      assert.valid_failover({}, dead, {}, ctx)
      local idle = H.machine { id = "idle" }
      assert.same({}, P.failover(idle, live, ctx))
    end)

    it("is valid and deterministic after any allocation", function()
      for seed = 1, 30 do
        local rand = H.rng(seed)
        local machines = H.random_fleet(rand(2, 30), seed)
        local ctx = H.ctx(rand(1, 2000))
        local running = H.with_shards(machines, P.allocate(machines, ctx))
        local d = running[rand(1, #running)]
        local survivors = H.without(running, d.id)
        local r = P.failover(d, survivors, ctx)
        assert.valid_failover(r, d, survivors, ctx)
        assert.same(r, P.failover(d, H.shuffled(survivors, seed), ctx))
      end
    end)
  end)
end)
