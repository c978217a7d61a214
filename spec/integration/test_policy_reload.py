"""Policies on a running MASTER: a user policy decides, SIGHUP reloads it
transactionally (a broken file keeps the previous one), a reload alone moves
no shard, and a policy that misbehaves at call time falls back to the
default while MASTER keeps serving. Work the instruction count cannot see
meets the time budget (--policy-timeout), and one VM step longer than the
budget plus the grace is abandoned while MASTER keeps answering.
"""
import asyncio
import os
import signal
import tempfile
import unittest

from harness import Control, Master, http_get, machine, run, status

ALL_TO_FIRST = """
-- every shard to the machine with the lowest id
return {
  allocate = function(machines, ctx)
    table.sort(machines, function(a, b) return a.id < b.id end)
    local list = {}
    for s = 0, ctx.shard_count - 1 do list[#list + 1] = s end
    return { [machines[1].id] = list }
  end,
}
"""

FAILOVER_TO_LAST = """
-- a dead machine's shards all go to the live machine with the highest id
return {
  failover = function(dead, machines, ctx)
    table.sort(machines, function(a, b) return a.id > b.id end)
    return { [machines[1].id] = dead.shards }
  end,
}
"""

BROKEN = "return { allocate = function( }"

NAMES_A = """
-- names a real machine: the synthetic self-check fleet has no "a"
return {
  allocate = function(machines, ctx)
    local ids = {}
    for _, m in ipairs(machines) do ids[m.id] = true end
    assert(ids["a"], "machine a is not in this fleet")
    local list = {}
    for s = 0, ctx.shard_count - 1 do list[#list + 1] = s end
    return { a = list }
  end,
}
"""

BAD_RESULT = """
-- passes the load-time self-check, misbehaves on the real machine "a"
return {
  failover = function(dead, machines, ctx)
    if dead.id == "a" then return { ["no-such-machine"] = dead.shards } end
    return { [machines[1].id] = dead.shards }
  end,
}
"""


# Comparisons of 4 KiB strings of NULs: strcoll per piece, one instruction each.
COMPARE_NUL = """
local z = string.rep("\\0", 4095)
local a, b = z .. "a", z .. "b"
while true do if a < b then end end
"""

# One insert whose rehash reinserts 65536 colliding integer keys: seconds
# (longer under sanitizers) inside ONE VM instruction.
REHASH = """
local m, t = (1 << 17) - 1, {}
for i = 1, 1 << 16 do t[i * m] = true end
t[((1 << 16) + 1) * m] = true
return {}
"""

# Passes the self-check on the live fleet (its first failover), then attacks
# at the next failover.
CONVERT_ON_FAILOVER = """
local calls = 0
return {
  failover = function(dead, machines, ctx)
    calls = calls + 1
    if calls > 1 then
      local d = "1" .. string.rep("0", 300) .. "." .. string.rep("0", 3700) .. "1"
      local lo, hi = "-" .. d, d
      while true do for _ = lo, hi, lo do end end
    end
    return { [machines[1].id] = dead.shards }
  end,
}
"""


class PolicyReload(unittest.TestCase):

    def setUp(self):
        fd, self.path = tempfile.mkstemp(suffix=".lua")
        os.close(fd)
        self.write(ALL_TO_FIRST)

    def tearDown(self):
        os.unlink(self.path)

    def write(self, text):
        with open(self.path + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.path + ".tmp", self.path)

    def test_user_policy_reload_and_rollback(self):
        with Master("--shards", "6", "--expected-machines", "3", "--collect-window", "30",
                    "--heartbeat-interval", "1", "--heartbeat-grace", "1",
                    "--reconnect-grace", "0.3", "--policy", self.path) as m:
            async def go():
                a, b, c = Control(m, "a"), Control(m, "b"), Control(m, "c")
                for x in (a, b, c):
                    await x.start()
                self.assertEqual((await a.next_connect())["shards"], list(range(6)))
                self.assertEqual((await b.next_connect())["shards"], [])
                self.assertEqual((await c.next_connect())["shards"], [])

                # a good reload: nothing moves until the next decision
                mark = m.mark()
                self.write(FAILOVER_TO_LAST)
                m.signal(signal.SIGHUP)
                m.wait_log(r"policy reloaded from", 5, mark)
                await b.no_connect(0.3)
                await c.no_connect(0.1)

                # a broken file: the previous generation stays
                mark = m.mark()
                self.write(BROKEN)
                m.signal(signal.SIGHUP)
                line = m.wait_log(r"error", 5, mark)
                self.assertIn(os.path.basename(self.path), line)
                self.assertEqual(http_get(m.port, "/healthz")[0], 200)

                # the next decision uses FAILOVER_TO_LAST: all of a's shards to c
                await a.drop()
                self.assertEqual((await c.next_connect(4))["shards"], list(range(6)))
                await b.no_connect(0.3)
                for x in (b, c):
                    await x.close()
            run(go())
            self.assertEqual(m.stop(), 0)

    def test_bad_result_falls_back_to_the_default(self):
        self.write(BAD_RESULT)
        with Master("--shards", "4", "--expected-machines", "3", "--collect-window", "30",
                    "--heartbeat-interval", "1", "--heartbeat-grace", "1",
                    "--reconnect-grace", "0.3", "--policy", self.path) as m:
            async def go():
                a, b = Control(m, "a"), Control(m, "b")
                s = Control(m, "s", standby=True)
                for x in (a, b, s):
                    await x.start()
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                await s.next_connect()
                await a.drop()
                # the default failover: everything to the standby
                self.assertEqual((await s.next_connect(4))["shards"], sa)
                st = status(m)
                self.assertEqual(machine(st, "s")["shards"], sa)
                for x in (b, s):
                    await x.close()
            run(go())
            m.wait_log(r"no-such-machine")
            self.assertEqual(m.stop(), 0)

    def test_a_reload_is_checked_against_the_live_fleet(self):
        with Master("--shards", "4", "--expected-machines", "2", "--collect-window", "30",
                    "--heartbeat-interval", "1", "--policy", self.path) as m:
            async def go():
                a, b = Control(m, "a"), Control(m, "b")
                for x in (a, b):
                    await x.start()
                await a.next_connect()
                self.write(NAMES_A)
                mark = m.mark()
                m.signal(signal.SIGHUP)
                m.wait_log(r"policy reloaded", start=mark)
                self.assertEqual(m.count(r"reload failed"), 0)
                for x in (a, b):
                    await x.close()
            run(go())
            self.assertEqual(m.stop(), 0)

    def test_time_budget(self):
        # heartbeats wait while this test blocks on the log: a long grace
        with Master("--shards", "4", "--expected-machines", "3", "--collect-window", "30",
                    "--heartbeat-interval", "1", "--heartbeat-grace", "30",
                    "--reconnect-grace", "0.3", "--policy-timeout", "0.2",
                    "--policy", self.path) as m:
            async def go():
                a, b, c = Control(m, "a"), Control(m, "b"), Control(m, "c")
                for x in (a, b, c):
                    await x.start()
                self.assertEqual((await a.next_connect())["shards"], list(range(4)))
                await b.next_connect()
                await c.next_connect()

                # a reload whose file spins on comparisons: refused by the time budget
                mark = m.mark()
                self.write(COMPARE_NUL)
                m.signal(signal.SIGHUP)
                line = m.wait_log(r"reload failed", 10, mark)
                self.assertIn("time budget exceeded", line)
                self.assertEqual(http_get(m.port, "/healthz")[0], 200)

                # one VM step far longer than the budget: MASTER stops waiting at the
                # budget plus the grace, keeps the running policy, and answers while
                # the abandoned step still runs on its thread
                mark = m.mark()
                self.write(REHASH)
                m.signal(signal.SIGHUP)
                line = m.wait_log(r"reload failed", 10, mark)
                self.assertIn("abandoned", line)
                self.assertEqual(http_get(m.port, "/healthz")[0], 200)
                self.assertEqual(machine(status(m), "a")["shards"], list(range(4)))

                # a policy that passes the live self-check and attacks at call time:
                # the failover is decided by the default, as for any failure
                mark = m.mark()
                self.write(CONVERT_ON_FAILOVER)
                m.signal(signal.SIGHUP)
                m.wait_log(r"policy reloaded", 10, mark)
                await a.drop()
                got = (await b.next_connect(5))["shards"] + (await c.next_connect(5))["shards"]
                self.assertEqual(sorted(got), list(range(4)))
                line = m.wait_log(r"rejected", 5, mark)
                self.assertIn("time budget exceeded", line)
                self.assertIn("this decision uses the default policy", line)
                self.assertEqual(http_get(m.port, "/healthz")[0], 200)
                for x in (b, c):
                    await x.close()
            run(go())
            self.assertEqual(m.stop(), 0)

    def test_broken_policy_at_start_is_refused(self):
        self.write(BROKEN)
        with Master("--shards", "4", "--policy", self.path, wait=False) as m:
            self.assertEqual(m.wait(10), 2)  # bad configuration
            self.assertIn(os.path.basename(self.path), m.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
