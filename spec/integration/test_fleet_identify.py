"""A whole fleet against the fake Discord (spec/fake_gateway.py): the real
discluster-master, real discluster-control agents and the reference cluster
(scripts/discluster-cluster) on loopback. Every test asserts what Discord
would see: no INVALID_SESSION, never two open sessions of one shard, and the
number of identifies it expects; and that MASTER's `remaining` is Discord's.
"""
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from control_harness import (MASTER_FAST, Fleet, alive, kill_group, status,  # noqa: E402
                             wait_for)
from harness import SRC  # noqa: E402
from fake_gateway import FakeGateway  # noqa: E402

TOKEN = "fake.fleet.TOKEN-never-logged"
CLUSTER = "exec /usr/bin/python3 " + os.path.join(SRC, "scripts", "discluster-cluster")
GW_INTERVAL = 0.3   # the fake gateway's per-bucket identify pace
MASTER_INTERVAL = "0.4"  # MASTER's: the pace plus a margin, as in production


class FleetCase(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        self.gw = None

    def tearDown(self):
        self.fleet.close()
        if self.gw:
            self.gw.close()

    def start(self, shards=24, mc=4, machines=3, remaining=1000, reserve=10, master_args=(),
              commands=None, **gw_kw):
        self.gw = FakeGateway(token=TOKEN, shards=shards, max_concurrency=mc,
                              identify_interval=GW_INTERVAL, remaining=remaining,
                              dispatch_interval=0.5, **gw_kw).start()
        self.m = self.fleet.master("--api-base", self.gw.api_base, "--expected-machines",
                                   str(machines), "--collect-window", "20", *MASTER_FAST,
                                   "--identify-interval", MASTER_INTERVAL,
                                   "--identify-reserve", str(reserve), *master_args,
                                   token=TOKEN)
        self.agents = {}
        for i in range(machines):
            name = "m%d" % i
            cmd = (commands or {}).get(name, CLUSTER)
            self.agents[name] = self.fleet.agent(self.m.port, name, command=cmd)
        return self.m

    def stats(self):
        return self.gw.stats()

    def check_sessions(self):
        """What every fleet test asserts of Discord's side."""
        st = self.stats()
        self.assertEqual(st["invalid_sessions"], 0, st["identifies"])
        self.assertEqual(list(st["double_sessions"]), [], (st["double_sessions"], st["closes"]))
        self.assertLessEqual(st["max_open_per_shard"], 1)
        return st

    def check_budget(self):
        """MASTER's remaining is the initial figure minus what Discord saw."""
        st = self.stats()
        ms = status(self.m)
        self.assertEqual(ms["session_start_limit"]["remaining"], st["remaining"])
        return st, ms

    def wait_open(self, shards, timeout=30):
        def ok():
            o = self.stats()["open"]
            return all(o.get(str(s), 0) == 1 for s in shards)
        wait_for(ok, timeout, "an open session for each of shards %s" % list(shards))

    def wait_all_ready(self, timeout=30):
        def ok():
            st = status(self.m)
            live = [x for x in st["machines"] if x["shards"]]
            return (st["state"] == "running" and not st["unassigned"] and
                    all(x.get("connect") == "ready" for x in live))
        wait_for(ok, timeout, "every machine ready")

    def no_secret_in_logs(self):
        for p in [self.m] + list(self.agents.values()):
            self.assertNotIn(TOKEN, p.log())

    def cluster_pid(self, agent, shard):
        """The pid of the running cluster that holds shard (from the agent log)."""
        pid = None
        for line in agent.log().split("\n"):
            mm = re.search(r"cluster \d+ started: pid (\d+), shards (\S+)", line)
            if mm and str(shard) in mm.group(2).split(","):
                pid = int(mm.group(1))
        return pid


class FleetIdentify(FleetCase):

    def test_start_crash_and_failover_are_paced_and_counted(self):
        m = self.start()
        self.wait_all_ready()
        self.wait_open(range(24))
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)
        st, ms = self.check_budget()
        self.assertEqual(ms["session_start_limit"]["remaining"], 1000 - 24)
        self.assertEqual(ms["identify"]["granted"], 24)
        # Identifies of one bucket never closer than Discord's pace.
        for b in range(4):
            ts = sorted(i["t"] for i in st["identifies"] if i["bucket"] == b)
            self.assertTrue(all(y - x >= GW_INTERVAL for x, y in zip(ts, ts[1:])), ts)

        # Discord refuses every resume from now on, so each move below starts
        # new sessions: they go through the queue and are counted. (Resumes,
        # which cost nothing, are test_fleet_sessions.py's.)
        self.gw.configure(refuse_resume=True)

        # A cluster crash: its restart tries RESUME, is refused, identifies.
        owner = {x["id"]: x["shards"] for x in ms["machines"]}
        victim_shards = owner["m0"]
        pid = self.cluster_pid(self.agents["m0"], victim_shards[0])
        self.assertIsNotNone(pid)
        kill_group(pid)
        wait_for(lambda: self.stats()["identify_count"] >= 24 + len(victim_shards), 30,
                 "the crashed cluster's shards identified again")
        self.wait_open(range(24))
        self.assertEqual(self.stats()["identify_count"], 24 + len(victim_shards))

        # A machine dies: its cluster sees EOF and closes its sessions; after the
        # reconnect grace its shards move and identify on the receivers.
        dead = owner["m1"]
        self.agents["m1"].proc.send_signal(signal.SIGKILL)
        m.wait_log(r"\[m1\] failed: ", 15)  # no reconnect within the grace
        want = 24 + len(victim_shards) + len(dead)
        wait_for(lambda: self.stats()["identify_count"] >= want, 30,
                 "the dead machine's shards identified on the receivers")
        self.wait_open(range(24))
        self.assertEqual(self.stats()["identify_count"], want)
        self.check_sessions()
        st, ms = self.check_budget()
        self.assertEqual(ms["session_start_limit"]["remaining"], 1000 - want)
        self.assertEqual(sorted(s for x in ms["machines"] for s in x["shards"]), list(range(24)))
        self.no_secret_in_logs()

    def test_the_reserve_holds_shards_back(self):
        # 30 identifies left, reserve 10: 20 sessions start, 4 shards wait.
        self.start(remaining=30, reset_after=3600000)
        wait_for(lambda: self.stats()["identify_count"] >= 20, 30, "20 identifies")
        self.m.wait_log(r"identify budget: 10 left, reserve 10: grants stop", 10)
        time.sleep(1.5)  # nothing more starts
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 20)
        st, ms = self.check_budget()
        self.assertEqual(ms["session_start_limit"]["remaining"], 10)
        self.assertEqual(ms["identify"]["waiting"], 4)
        self.assertIn("budget", ms["identify"]["blocked"])
        self.assertEqual(sum(1 for v in st["open"].values() if v), 20)
        self.assertEqual(ms["state"], "connecting")  # not every machine is ready
        self.assertEqual(self.m.count(r"grants stop"), 1)

    def test_reconnectable_close_codes_do_not_stop_the_fleet_fatal_ones_do(self):
        m = self.start(fatal_shards={5: 4000})
        # shard 5 is closed with 4000 at its identify: the cluster reconnects
        # through the queue; once Discord lets it in, the fleet is whole.
        wait_for(lambda: any(i["outcome"] == "closed:4000" for i in self.stats()["identifies"]),
                 30, "shard 5 closed with 4000")
        self.gw.configure(fatal_shards={})
        self.wait_all_ready(40)
        self.wait_open(range(24))
        st = self.check_sessions()
        closed = sum(1 for i in st["identifies"] if i["outcome"] == "closed:4000")
        self.assertEqual(st["identify_count"], 24 + closed)
        self.check_budget()
        self.assertEqual(status(m)["state"], "running")
        # 4014 (disallowed intents) is fatal: the fleet stops, MASTER exits 3.
        # (The restarted cluster's RESUME is refused, so it identifies.)
        self.gw.configure(fatal_shards={7: 4014}, refuse_resume=True)
        holder = [x["id"] for x in status(m)["machines"] if 7 in x["shards"]][0]
        kill_group(self.cluster_pid(self.agents[holder], 7))
        self.assertEqual(m.wait(30), 3)
        m.wait_log(r"fatal Discord error 4014")
        for a in self.agents.values():
            self.assertEqual(a.wait(15), 0)
        self.assertEqual(self.stats()["invalid_sessions"], 0)
        self.no_secret_in_logs()

    def test_a_machine_that_never_readies_holds_nobody_back(self):
        silent = self.fleet.script("silent", "#!/bin/sh\nexec cat >/dev/null\n")
        m = self.start(master_args=("--connect-timeout", "2"), commands={"m2": silent})
        wait_for(lambda: status(m)["state"] == "running", 40, "running")
        ms = status(m)
        mine = {x["id"]: x for x in ms["machines"]}
        self.assertEqual(mine["m2"]["connect"], "late")
        others = mine["m0"]["shards"] + mine["m1"]["shards"]
        self.wait_open(others)
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], len(others))
        self.check_budget()
        for s in mine["m2"]["shards"]:
            self.assertEqual(st["open"].get(str(s), 0), 0)
        self.assertTrue(all(alive(a.proc.pid) for a in self.agents.values()))


if __name__ == "__main__":
    unittest.main(verbosity=2)
