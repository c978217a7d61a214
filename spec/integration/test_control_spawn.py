"""discluster-control against the real MASTER: spawning clusters, their
environment, READY before `ready`, grouping, the secret, and shutdown."""
import re
import signal
import unittest

from control_harness import (MASTER_FAST, Fleet, alive, shards_by_machine, status,
                             wait_for, wait_running)

TOKEN = "Bot.T0KEN.agent-test-never-logged"
SECRET = "agent-shared-s3cret"


class Spawn(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()

    def tearDown(self):
        self.fleet.close()

    def test_clusters_env_and_ready_after_every_ready_line(self):
        f = self.fleet
        m = f.master("--shards", "16", "--collect-window", "5", "--expected-machines", "1",
                     *MASTER_FAST, token=TOKEN, auth=SECRET)
        # Cluster 1 takes a second before READY: `ready` must wait for it.
        a = f.agent(m.port, "spawn-a", auth=SECRET, env={"READY_DELAY": "1", "SLOW_CLUSTER": "1"})
        m.wait_log(r"\[spawn-a\] ready with 16 shards", 15)
        a.wait_log(r"ready: all 16 assigned", 5)
        log = a.log()
        self.assertLess(log.index("cluster 1 ready"), log.index("ready: all 16 assigned"), log)
        self.assertLess(log.index("cluster 0 ready"), log.index("ready: all 16 assigned"), log)
        starts = f.starts()
        self.assertEqual(sorted(s for _, ss in starts for s in ss), list(range(16)))
        self.assertEqual(sorted(len(ss) for _, ss in starts), [6, 10])  # 10 per cluster
        envs = f.envs()
        self.assertEqual(len(envs), 2)
        ids = set()
        for pid, env in envs.items():
            self.assertEqual(env["SHARD_COUNT"], "16")
            self.assertEqual(env["DISCORD_TOKEN"], TOKEN)
            self.assertNotIn("DISCLUSTER_AUTH", env)  # the secret stays with the agent
            shards = dict(starts)[pid]
            self.assertEqual(env["SHARD_IDS"], ",".join(map(str, shards)))
            ids.add(env["CLUSTER_ID"])
        self.assertEqual(ids, {"0", "1"})
        self.assertEqual(shards_by_machine(m), {"spawn-a": list(range(16))})
        for text in (a.log(), m.log()):
            self.assertNotIn(TOKEN, text)
            self.assertNotIn(SECRET, text)
        # A normal MASTER stop is not a shutdown: the agent keeps its clusters.
        self.assertEqual(m.stop(), 0)
        a.wait_log(r"lost MASTER .*1001", 5)
        for pid, _ in starts:
            self.assertTrue(alive(pid))
        # SIGTERM while not connected: nothing to offload to; stop at once.
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(10), 0, a.log())
        for pid, _ in starts:
            wait_for(lambda: not alive(pid), 5, "cluster %d to stop" % pid)

    def test_group_size_is_a_multiple_of_max_concurrency(self):
        f = self.fleet
        m = f.master("--shards", "16", "--max-concurrency", "4", "--collect-window", "5",
                     "--expected-machines", "1", *MASTER_FAST)
        f.agent(m.port, "groups", "--shards-per-cluster", "5")
        m.wait_log(r"\[groups\] ready with 16 shards", 15)
        self.assertEqual(sorted(ss for _, ss in f.starts()),
                         [list(range(0, 8)), list(range(8, 16))])

    def test_wrong_secret_is_retried_and_never_logged(self):
        f = self.fleet
        m = f.master("--shards", "4", "--collect-window", "5", "--expected-machines", "1",
                     *MASTER_FAST, auth=SECRET)
        a = f.agent(m.port, "nosecret", auth="wrong-" + SECRET)
        a.wait_log(r"HTTP 401", 5)
        a.wait_log(r"retrying in 0\.\d+s", 5)  # jittered, capped by --retry 0.2
        self.assertGreaterEqual(len(re.findall("HTTP 401", a.log())), 1)
        self.assertNotIn(SECRET, a.log())
        self.assertEqual(f.starts(), [])
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(10), 0, a.log())

    def test_standby_gets_an_empty_connect_and_runs_nothing(self):
        f = self.fleet
        m = f.master("--shards", "8", "--collect-window", "5", "--expected-machines", "2",
                     *MASTER_FAST)
        f.agent(m.port, "active")
        s = f.agent(m.port, "spare", "--standby")
        wait_running(m)
        s.wait_log(r"connect: 0 shards", 5)
        self.assertEqual(shards_by_machine(m), {"active": list(range(8)), "spare": []})
        self.assertEqual(len(f.starts()), 1)
        st = {x["id"]: x for x in status(m)["machines"]}
        self.assertTrue(st["spare"]["standby"])
        self.assertFalse(st["active"]["standby"])
        self.assertGreaterEqual(st["active"]["cores"], 1)
        self.assertRegex(st["active"]["version"], r"^\d+\.\d+\.\d+")


if __name__ == "__main__":
    unittest.main(verbosity=2)
