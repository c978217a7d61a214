"""discluster-control: a changed assignment starts only the clusters it
needs and stops only those whose shards are gone."""
import asyncio
import signal
import unittest

from control_harness import (MASTER_FAST, FakeMaster, Fleet, alive, initialise,
                             shards_by_machine, wait_for, wait_running)

OP_INFO, OP_INITIALISE, OP_CONNECT, OP_ACK, OP_READY = 0, 5, 6, 8, 10


class Assignment(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()

    def tearDown(self):
        self.fleet.close()

    def test_failover_enlarges_the_list_and_only_new_clusters_start(self):
        f = self.fleet
        m = f.master("--shards", "16", "--collect-window", "5", "--expected-machines", "2",
                     *MASTER_FAST)
        a = f.agent(m.port, "keeper")
        b = f.agent(m.port, "victim")
        wait_running(m)
        before = shards_by_machine(m)
        self.assertEqual(sorted(before["keeper"] + before["victim"]), list(range(16)))
        self.assertTrue(before["keeper"] and before["victim"])
        a.wait_log(r"ready: all %d assigned" % len(before["keeper"]), 5)
        keeper_starts = [(pid, ss) for pid, ss in f.starts() if set(ss) <= set(before["keeper"])]
        mark = a.mark()
        n_before = len(f.starts())
        b.kill()  # SIGKILL: no drain; MASTER fails it over after the reconnect grace
        a.wait_log(r"ready: all 16 assigned", 15, start=mark)
        self.assertEqual(shards_by_machine(m), {"keeper": list(range(16))})
        line = a.wait_log(r"connect: 16 shards", 1, start=mark)
        self.assertRegex(line, r"%d clusters kept, \d+ started, 0 stopped" % len(keeper_starts))
        # The old clusters still run under their first pid; the new ones hold
        # exactly the victim's shards.
        for pid, _ in keeper_starts:
            self.assertTrue(alive(pid))
        later = f.starts()
        added = [ss for _, ss in later[n_before:]]
        self.assertEqual(sorted(s for ss in added for s in ss), before["victim"], later)
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(15), 0, a.log())
        for pid, _ in later:
            wait_for(lambda: not alive(pid), 5, "cluster %d gone" % pid)

    def test_shrinking_and_regrouping_connects(self):
        f = self.fleet

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = f.agent(fm.port, "shrink")
            peer = await fm.accept()
            hello = await peer.recv(OP_INFO)
            self.assertEqual(hello["d"]["id"], "shrink")
            self.assertEqual(hello["d"]["shards"], [])
            await peer.send(OP_INITIALISE, initialise(40))
            await peer.send(OP_CONNECT, {"shards": list(range(25)), "redundant": False})
            await peer.recv(OP_ACK, where=lambda d: d["o"] == OP_CONNECT)
            r = await peer.recv(OP_READY)
            self.assertEqual(r["d"]["shards"], list(range(25)))
            first = dict((tuple(ss), pid) for pid, ss in f.starts())
            self.assertEqual(sorted(first), [tuple(range(0, 10)), tuple(range(10, 20)),
                                             tuple(range(20, 25))])
            # Shard 15 leaves: its group stops; 10-14 and 16-19 regroup with 30-31.
            mark = a.mark()
            want = [s for s in range(25) if s != 15] + [30, 31]
            await peer.send(OP_CONNECT, {"shards": want, "redundant": False})
            r = await peer.recv(OP_READY, where=lambda d: d["shards"] == sorted(want))
            line = a.wait_log(r"connect: 26 shards", 5, start=mark)
            self.assertIn("2 clusters kept, 2 started, 1 stopped", line)
            self.assertTrue(alive(first[tuple(range(0, 10))]))
            self.assertTrue(alive(first[tuple(range(20, 25))]))
            wait_for(lambda: not alive(first[tuple(range(10, 20))]), 5, "old group to stop")
            self.assertEqual(sorted(ss for _, ss in f.starts()[3:]),
                             [[10, 11, 12, 13, 14, 16, 17, 18, 19, 30], [31]])
            # An info request is answered with the shards that run now.
            await peer.send(OP_INFO, {})
            p = await peer.recv(OP_INFO)
            self.assertEqual(p["d"]["shards"], sorted(want))
            # An empty connect stops everything; the agent stays, as a standby.
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            r = await peer.recv(OP_READY, where=lambda d: d["shards"] == [])
            for pid, _ in f.starts():
                wait_for(lambda: not alive(pid), 5, "cluster %d gone" % pid)
            self.assertIsNone(a.proc.poll())
            peer.release()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(10), 0, a.log())

        asyncio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
