-- helpers_spec.lua: the spec helpers themselves. The validators must
-- reject every shape the master rejects, and load_policy must refuse what
-- the master's sandbox refuses, or specs of user policies prove nothing.
local H = require("policy_helpers")

local fixtures = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") .. "/fixtures"

describe("policy_helpers", function()
  local machines = H.fleet { { id = "alpha" }, { id = "bravo" } }
  local ctx = H.ctx(4)

  local function good() return { alpha = { 0, 1 }, bravo = { 2, 3 } } end

  describe("check_allocation", function()
    it("accepts a complete split, empty lists and integral floats", function()
      assert.valid_allocation(good(), machines, ctx)
      assert.valid_allocation({ alpha = { 0, 1, 2, 3 }, bravo = {} }, machines, ctx)
      assert.valid_allocation({ alpha = { 0.0, 1, 2, 3 } }, machines, ctx)
    end)

    local bad = {
      { "not a table", function() return 7 end, "allocate returned 7" },
      { "a non-string key", function() local r = good(); r[1] = {}; return r end, "has the key 1" },
      { "an unknown id", function() local r = good(); r.ghost = {}; return r end, "unknown machine 'ghost'" },
      { "a list that is not a table", function() local r = good(); r.bravo = "2,3"; return r end, "expected an array" },
      { "a non-integer", function() local r = good(); r.bravo[1] = 2.5; return r end, "holds 2.5" },
      { "a string shard", function() local r = good(); r.bravo[1] = "2"; return r end, "holds '2'" },
      { "NaN", function() local r = good(); r.bravo[1] = 0 / 0; return r end, "expected integer shard ids" },
      { "a shard out of range", function() local r = good(); r.bravo[2] = 4; return r end, "shard 4, outside 0-3" },
      { "a negative shard", function() local r = good(); r.bravo[2] = -1; return r end, "outside 0-3" },
      { "a duplicate", function() local r = good(); r.bravo[1] = 1; return r end, "gives shard 1 to both" },
      { "a missing shard", function() local r = good(); r.bravo[2] = nil; return r end, "leaves 1 shard(s) out" },
      { "a hole", function() local r = good(); r.bravo = { [1] = 2, [3] = 3 }; return r end, "not an array" },
      { "a named key", function() local r = good(); r.bravo.x = 3; return r end, "not an array (key 'x')" },
    }
    for _, case in ipairs(bad) do
      it("rejects " .. case[1], function()
        local ok, why = H.check_allocation(case[2](), machines, ctx)
        assert.is_false(ok)
        assert.matches(case[3], why, 1, true)
        assert.is_not.valid_allocation(case[2](), machines, ctx)
      end)
    end
  end)

  describe("check_failover", function()
    local dead = H.machine { id = "charlie", shards = { 5, 9 } }
    local c = H.ctx(10)

    it("accepts exactly the dead shards", function()
      assert.valid_failover({ alpha = { 9 }, bravo = { 5 } }, dead, machines, c)
      assert.valid_failover({}, dead, {}, c)
    end)

    it("rejects shards the dead machine did not run, gaps and strangers", function()
      assert.is_not.valid_failover({ alpha = { 5, 9, 1 } }, dead, machines, c)
      assert.is_not.valid_failover({ alpha = { 5 } }, dead, machines, c)
      assert.is_not.valid_failover({}, dead, machines, c)
      assert.is_not.valid_failover({ charlie = { 5, 9 } }, dead, machines, c)
      assert.is_not.valid_failover({ alpha = { 5 }, bravo = { 5, 9 } }, dead, machines, c)
    end)
  end)

  describe("load_policy", function()
    it("refuses what the master's sandbox refuses", function()
      local why = {
        syntax = "unexpected symbol", runtime = "attempt to index a nil value",
        infinite = "instruction budget exceeded", pcall_infinite = "instruction budget exceeded",
        memory_bomb = "memory limit", io = "global 'io'", os_execute = "field 'execute'",
        require = "global 'require'", load = "global 'load'", not_table = "returned 42",
        bad_field = "field 'allocate' is a string", bad_load_floor = "load_floor",
        bad_ratio = "ratio(charlie) returned inf", bad_shape = "has the key 1",
        gc = "__gc metamethods are not allowed",
        xpcall_handler = "global 'xpcall'", rep_bomb = "string.rep: result longer",
        pattern_bomb = "field 'match'", compare_nul_bomb = "time budget exceeded",
      }
      for name, text in pairs(why) do
        local ok, err = pcall(H.load_policy, fixtures .. "/bad/" .. name .. ".lua")
        assert.is_false(ok)
        assert.matches(text, err, 1, true)
      end
    end)

    it("overlays the user's fields on the default", function()
      local p = H.load_policy(fixtures .. "/by_cores.lua")
      local d = H.load_default()
      assert.equal(d.load_floor, p.load_floor)
      assert.equal(8, p.ratio(H.machine { id = "a", cores = 8, loadavg = 5 }))
      local m = H.fleet { { id = "a", cores = 1, loadavg = 9 }, { id = "b", cores = 3 } }
      assert.same({ a = 1, b = 3 }, H.counts(p.allocate(m, H.ctx(4))))
    end)

    it("collects log() and print() lines", function()
      local _, env = H.load_default()
      H.clear_logs()
      env.log("warn", "careful")
      env.print("a", 1)
      assert.same({ { level = "warn", message = "careful" }, { level = "info", message = "a 1" } }, H.logs)
      assert.has_error(function() env.log("loud", "x") end)
    end)
  end)

  describe("fleet builders", function()
    it("fill every field and stay deterministic", function()
      assert.same({ id = "x", cores = 4, loadavg = 0.0, standby = false, shards = {} }, H.machine { id = "x" })
      assert.same(H.random_fleet(5, 3), H.random_fleet(5, 3))
      assert.are_not.same(H.random_fleet(5, 3), H.random_fleet(5, 4))
      local f = H.uniform_fleet(3, 2, 0.5)
      assert.same({ "m001", "m002", "m003" }, { f[1].id, f[2].id, f[3].id })
      local running = H.with_shards(f, { m002 = { 3, 1 } })
      assert.same({ 1, 3 }, running[2].shards)
      assert.equal(2, #H.without(running, "m001"))
    end)
  end)
end)
