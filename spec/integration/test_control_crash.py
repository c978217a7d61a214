"""discluster-control: crashed clusters restart with backoff, up to 3 times,
then are reported in the heartbeat's failed_clusters; FATAL is relayed and
MASTER's shutdown stops every agent with status 0."""
import asyncio
import json
import signal
import unittest

from control_harness import (MASTER_FAST, FakeMaster, Fleet, alive, initialise, wait_for,
                             wait_running)

OP_INFO, OP_INITIALISE, OP_CONNECT, OP_ACK, OP_HEARTBEAT, OP_READY = 0, 5, 6, 8, 9, 10

# Crashes (exit 7, before READY) while $TEST_DIR/crashes < CRASH_TIMES when
# it holds CRASH_SHARD; prints FATAL after READY when it holds FATAL_SHARD.
CRASHING_CLUSTER = r"""#!/bin/sh
echo "start $$ $SHARD_IDS" >> "$TEST_DIR/starts"
case ",$SHARD_IDS," in
  *",${CRASH_SHARD:-x},"*)
    n=$(cat "$TEST_DIR/crashes" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$TEST_DIR/crashes"
    if [ "$n" -lt "${CRASH_TIMES:-1000}" ]; then echo "crashing ($n)"; exit 7; fi ;;
esac
echo READY
case ",$SHARD_IDS," in
  *",${FATAL_SHARD:-x},"*)
    sleep 0.3
    echo "FATAL 4004 shard=$FATAL_SHARD Authentication failed" ;;
esac
exec cat >/dev/null
"""


def fmt(x):
    """A number as C's %.14g writes it (what the agent sends)."""
    return "%.14g" % x


class Crash(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        self.cmd = self.fleet.script("crashing", CRASHING_CLUSTER)

    def tearDown(self):
        self.fleet.close()

    def test_crash_restarts_with_backoff_then_ready(self):
        f = self.fleet
        m = f.master("--shards", "16", "--collect-window", "5", "--expected-machines", "1",
                     *MASTER_FAST)
        a = f.agent(m.port, "crashy", command=self.cmd,
                    env={"CRASH_SHARD": "12", "CRASH_TIMES": "2"})
        m.wait_log(r"\[crashy\] ready with 16 shards", 15)
        a.wait_log(r"ready: all 16", 5)
        log = a.log()
        self.assertIn("restart 1 of 3 in 0.1s", log)
        self.assertIn("restart 2 of 3 in 0.2s", log)
        self.assertNotIn("restart 3 of 3", log)
        self.assertIn("crashing (1)", log)  # its other stdout lines reach the log
        # `ready` waited for the restarted cluster.
        self.assertLess(log.index("restart 2 of 3"), log.index("ready: all 16"))
        group = [ss for _, ss in f.starts() if 12 in ss]
        self.assertEqual(len(group), 3)
        self.assertEqual(group[0], list(range(10, 16)))
        wait_running(m)
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(15), 0, a.log())

    def test_each_connection_hears_the_empty_list_first(self):
        """Nothing failed: the first heartbeat on every connection says
        failed_clusters [] (a MASTER that just took over learns it), the
        later ones leave it out, byte for byte the canonical forms."""
        f = self.fleet

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = f.agent(fm.port, "steady", command=self.cmd)
            for _ in range(2):  # the second time over a new connection
                peer = await fm.accept()
                await peer.recv(OP_INFO)
                await peer.send(OP_INITIALISE, initialise(8, heartbeat_ms=200))
                raw = []
                while len(raw) < 3:
                    text = await asyncio.wait_for(peer.ws.recv(), 10)
                    if '"o":9' in text:
                        raw.append(text)
                load = [json.loads(t)["d"]["loadavg"] for t in raw]
                self.assertEqual(raw[0], '{"o":9,"d":{"loadavg":%s,"failed_clusters":[],'
                                         '"failed_clusters_more":0}}' % fmt(load[0]))
                for t, x in zip(raw[1:], load[1:]):
                    self.assertEqual(t, '{"o":9,"d":{"loadavg":%s}}' % fmt(x))
                await peer.ws.close()
                peer.release()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(10), 0, a.log())

        asyncio.run(go())

    def test_failed_cluster_is_reported_in_heartbeats(self):
        f = self.fleet

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = f.agent(fm.port, "failing", command=self.cmd, env={"CRASH_SHARD": "2"})
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(8, heartbeat_ms=200))
            await peer.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await peer.recv(OP_ACK)
            hb = await peer.recv(OP_HEARTBEAT, where=lambda d: d.get("failed_clusters"))
            self.assertEqual(hb["d"]["failed_clusters"],
                             [{"cluster": 0, "shards": [0, 1, 2, 3], "exit": 7, "signal": 0}])
            self.assertGreaterEqual(hb["d"]["loadavg"], 0)
            self.assertFalse([p for p in peer.seen if p["o"] == OP_READY])
            self.assertEqual(len(f.starts()), 4)  # the first run and 3 restarts
            a.wait_log(r"giving up on it", 2)
            # While failed it is not running: info.shards leaves it out.
            await peer.send(OP_INFO, {})
            self.assertEqual((await peer.recv(OP_INFO))["d"]["shards"], [])
            # Later heartbeats keep reporting it.
            hb = await peer.recv(OP_HEARTBEAT)
            self.assertEqual(len(hb["d"]["failed_clusters"]), 1)
            # A connect without those shards clears it.
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            await peer.recv(OP_READY, where=lambda d: d["shards"] == [])
            hb = await peer.recv(OP_HEARTBEAT)
            self.assertEqual(hb["d"]["failed_clusters"], [])
            # then, nothing failing since, the list is left out (MASTER keeps it empty)
            for _ in range(2):
                hb = await peer.recv(OP_HEARTBEAT)
                self.assertEqual(set(hb["d"]), {"loadavg"})
            peer.release()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(10), 0, a.log())

        asyncio.run(go())

    def test_fatal_is_relayed_and_shutdown_stops_every_agent(self):
        f = self.fleet
        m = f.master("--shards", "16", "--collect-window", "5", "--expected-machines", "2",
                     *MASTER_FAST)
        env = {"FATAL_SHARD": "3"}
        a = f.agent(m.port, "fatal-a", command=self.cmd, env=env)
        b = f.agent(m.port, "fatal-b", command=self.cmd, env=env)
        m.wait_log(r"fatal Discord error 4004: shard 3: Authentication failed", 15)
        self.assertNotEqual(m.wait(10), 0)
        for x in (a, b):
            self.assertEqual(x.wait(15), 0, x.log())
            self.assertIn("MASTER sent shutdown", x.log())
            self.assertNotIn("reconnecting", x.log())
        teller = a if "reports FATAL 4004 on shard 3" in a.log() else b
        self.assertIn("relayed fatal 4004", teller.log())
        for pid, _ in f.starts():
            wait_for(lambda: not alive(pid), 5, "cluster %d gone" % pid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
