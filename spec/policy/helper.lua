-- helper.lua: busted --helper for policy specs. Puts this directory on
-- package.path so a spec can require("policy_helpers"), and registers
-- assert.valid_allocation and assert.valid_failover. Use it for your own
-- policy's specs too:
--   busted --helper=/path/to/discluster/spec/policy/helper.lua my_spec.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path

local H = require("policy_helpers")
H.register(require("luassert"), require("say"))
