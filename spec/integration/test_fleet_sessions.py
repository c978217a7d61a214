"""Session handoff across a whole fleet against the fake Discord: shards that
move are RESUMEd, not identified again, and never run on two machines at
once: a SIGKILLed agent, a drain, a rolling restart of every agent followed by
a rebalance, a MASTER restart, and a resume Discord refuses.
"""
import os
import signal
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from control_harness import MASTER_FAST, free_port, status, wait_for  # noqa: E402
from test_fleet_identify import CLUSTER, FleetCase, TOKEN  # noqa: E402


class FleetSessions(FleetCase):

    def all_sessions_known(self, n=24):
        wait_for(lambda: status(self.m)["sessions_known"] >= n, 20,
                 "MASTER to know every shard's session")

    def owners(self):
        return {x["id"]: sorted(x["shards"]) for x in status(self.m)["machines"]}

    def resumed(self, shards):
        st = self.stats()
        return sum(1 for r in st["resumes"] if r["outcome"] == "resumed" and r["shard"] in shards)

    def test_a_killed_agent_s_shards_resume_elsewhere(self):
        m = self.start()
        self.wait_all_ready()
        self.wait_open(range(24))
        self.all_sessions_known()
        moved = self.owners()["m1"]
        self.agents["m1"].proc.send_signal(signal.SIGKILL)
        m.wait_log(r"\[m1\] failed: ", 15)
        wait_for(lambda: self.resumed(moved) >= len(moved), 30, "every moved shard resumed")
        self.wait_open(range(24))
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)  # 0 new identifies
        self.check_budget()
        self.no_secret_in_logs()

    def test_a_drain_stops_first_and_resumes(self):
        m = self.start()
        self.wait_all_ready()
        self.wait_open(range(24))
        self.all_sessions_known()
        moved = self.owners()["m0"]
        self.agents["m0"].proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.agents["m0"].wait(30), 0)
        m.wait_log(r"\[m0\] stopped \d+ shards; their new machines start them", 10)
        wait_for(lambda: self.resumed(moved) >= len(moved), 30, "every drained shard resumed")
        self.wait_open(range(24))
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)
        self.check_budget()

    def test_a_rolling_restart_then_a_rebalance_identify_nothing(self):
        m = self.start()
        self.wait_all_ready()
        self.wait_open(range(24))
        for name in ("m0", "m1", "m2"):
            self.all_sessions_known()
            a = self.agents[name]
            a.proc.send_signal(signal.SIGTERM)
            self.assertEqual(a.wait(30), 0)
            wait_for(lambda: name not in self.owners() or not self.owners()[name], 20,
                     "%s's shards moved" % name)
            self.wait_open(range(24))
            self.agents[name] = self.fleet.agent(m.port, name, command=CLUSTER)
            wait_for(lambda: name in self.owners() and
                     next(x for x in status(m)["machines"] if x["id"] == name)["state"] == "live",
                     20, "%s back" % name)
        self.all_sessions_known()
        req = urllib.request.Request("http://127.0.0.1:%d/rebalance" % m.port, data=b"",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            self.assertEqual(r.status, 202)
        m.wait_log(r"rebalance done", 60)
        self.wait_open(range(24))
        sizes = sorted(len(v) for v in self.owners().values())
        self.assertEqual(sizes, [8, 8, 8])  # the balance is back
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)  # every move was a resume
        self.check_budget()

    def test_a_master_restart_moves_nothing_and_identifies_nothing(self):
        port = free_port()
        m = self.start(master_args=("--listen", "127.0.0.1:%d" % port))
        self.wait_all_ready()
        self.wait_open(range(24))
        before = self.owners()
        m.proc.send_signal(signal.SIGTERM)
        self.assertEqual(m.wait(15), 0)
        self.m = self.fleet.master("--api-base", self.gw.api_base, "--expected-machines", "3",
                                   "--collect-window", "20", *MASTER_FAST,
                                   "--listen", "127.0.0.1:%d" % port, token=TOKEN)
        wait_for(lambda: status(self.m)["state"] == "running" and
                 not status(self.m)["unassigned"], 30, "the new MASTER running")
        self.assertEqual(self.owners(), before)
        self.all_sessions_known()
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)
        self.assertEqual(st["resumed_count"], 0)

    def test_a_refused_resume_falls_back_to_the_queue(self):
        m = self.start()
        self.wait_all_ready()
        self.wait_open(range(24))
        self.all_sessions_known()
        moved = self.owners()["m1"]
        self.gw.configure(refuse_resume=True)
        self.agents["m1"].proc.send_signal(signal.SIGKILL)
        m.wait_log(r"\[m1\] failed: ", 15)
        wait_for(lambda: self.stats()["identify_count"] >= 24 + len(moved), 40,
                 "the refused shards identified through the queue")
        self.wait_open(range(24))
        st = self.check_sessions()
        refused = sum(1 for r in st["resumes"] if r["outcome"] == "invalid_session")
        self.assertEqual(refused, len(moved))
        self.assertEqual(st["identify_count"], 24 + len(moved))
        self.check_budget()


if __name__ == "__main__":
    unittest.main(verbosity=2)
