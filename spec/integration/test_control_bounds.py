"""discluster-control under large or odd assignments: a `connect` with
100,000 shards leaves the agent responsive (heartbeats keep coming, SIGTERM
is served) and starts at most --max-clusters clusters, the shards beyond
reported in failed_clusters as over_cap; failed_clusters stays a bounded
summary (64 entries, under 16 KiB, failed_clusters_more counting the rest);
shards beyond shard_count are summed up in one log line."""
import asyncio
import json
import re
import signal
import time
import unittest

from control_harness import (MASTER_FAST, FakeMaster, Fleet, alive, initialise,
                             shards_by_machine, wait_for, wait_running)

OP_INFO, OP_OFFLOAD, OP_INITIALISE, OP_CONNECT, OP_ACK, OP_HEARTBEAT, OP_READY = (
    0, 3, 5, 6, 8, 9, 10)

IDLE_CLUSTER = r"""#!/bin/sh
echo "start $$ $SHARD_IDS" >> "$TEST_DIR/starts"
echo READY
exec cat >/dev/null
"""

FAILING_CLUSTER = r"""#!/bin/sh
echo "start $$ $SHARD_IDS" >> "$TEST_DIR/starts"
exit 7
"""


def list_bytes(failed):
    return len(json.dumps(failed, separators=(",", ":")))


class Recorder:
    """Reads every packet of a fake MASTER's peer in the background; each
    heartbeat is kept with the time it arrived."""

    def __init__(self, peer):
        self.peer = peer
        self.packets = []
        self.beats = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        while True:
            p = json.loads(await self.peer.ws.recv())
            self.packets.append(p)
            if p["o"] == OP_HEARTBEAT:
                self.beats.append((time.monotonic(), p["d"]))

    def of(self, op):
        return [p["d"] for p in self.packets if p["o"] == op]

    async def until(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if self.task.done():
                raise AssertionError("connection ended waiting for %s: %r"
                                     % (what, self.task.exception()))
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
            await asyncio.sleep(0.02)

    async def close(self, fm):
        self.task.cancel()
        self.peer.release()
        await fm.stop()


class Bounds(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        self.idle = self.fleet.script("idle", IDLE_CLUSTER)
        self.failing = self.fleet.script("failing", FAILING_CLUSTER)

    def tearDown(self):
        self.fleet.close()

    async def session(self, id, shard_count, *args, command):
        fm = FakeMaster()
        await fm.start()
        a = self.fleet.agent(fm.port, id, *args, command=command)
        peer = await fm.accept()
        await peer.recv(OP_INFO)
        await peer.send(OP_INITIALISE, initialise(shard_count, heartbeat_ms=200))
        rec = Recorder(peer)
        await rec.until(lambda: rec.beats, 10, "a first heartbeat")
        return fm, a, peer, rec

    def test_huge_connect_stays_responsive_and_caps_the_clusters(self):
        f = self.fleet
        n = 100000

        async def go():
            fm, a, peer, rec = await self.session("huge", n, "--max-clusters", "64",
                                                  "--log-level", "info", command=self.idle)
            t0 = time.monotonic()
            await peer.send(OP_CONNECT, {"shards": list(range(n)), "redundant": False})
            await rec.until(lambda: rec.of(OP_ACK), 10, "the connect's ack")
            await rec.until(lambda: len(f.starts()) == 64, 30, "64 clusters started")
            await asyncio.sleep(1.5)  # and it stays responsive once they run
            times = [t0] + [t for t, _ in rec.beats if t >= t0] + [time.monotonic()]
            gap = max(y - x for x, y in zip(times, times[1:]))
            self.assertLess(gap, 2.0, "heartbeats stopped for %.2fs" % gap)
            starts = f.starts()
            self.assertEqual(len(starts), 64)
            self.assertEqual(sorted(s for _, ss in starts for s in ss), list(range(640)))
            # The cap is one log line, not one per cluster or shard.
            log = a.log()
            self.assertEqual(len(re.findall(r"--max-clusters 64", log)), 1, log[-3000:])
            self.assertIn("connect: 99360 shards (640 to 99999) need 9936 more clusters than "
                          "--max-clusters 64 allows", log)
            # MASTER hears of them as failed clusters, a bounded summary.
            hb = rec.beats[-1][1]
            failed = hb["failed_clusters"]
            self.assertEqual(len(failed), 64)
            self.assertEqual(failed[0], {"cluster": -1, "shards": list(range(640, 650)),
                                         "exit": 0, "signal": 0, "over_cap": True})
            self.assertEqual(failed[63]["shards"], list(range(1270, 1280)))
            self.assertEqual(hb["failed_clusters_more"], 9936 - 64)
            self.assertLess(list_bytes(failed), 16384)
            self.assertFalse(rec.of(OP_READY))  # not every shard runs
            await peer.send(OP_INFO, {})
            info = await rec.until(lambda: rec.of(OP_INFO), 5, "an info report")
            self.assertEqual(info[0]["shards"], list(range(640)))
            # SIGTERM is served at once: offload, then stop on MASTER's empty connect.
            s0 = time.monotonic()
            a.signal(signal.SIGTERM)
            await rec.until(lambda: rec.of(OP_OFFLOAD), 5, "offload")
            self.assertLess(time.monotonic() - s0, 2.0)
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            while a.proc.poll() is None and time.monotonic() - s0 < 20:
                await asyncio.sleep(0.05)
            self.assertEqual(a.wait(5), 0, a.log()[-3000:])
            for pid, _ in f.starts():
                self.assertFalse(alive(pid))
            await rec.close(fm)

        asyncio.run(go())

    def test_real_master_moves_the_shards_over_the_cap(self):
        f = self.fleet
        m = f.master("--shards", "40", "--collect-window", "5", "--expected-machines", "2",
                     *MASTER_FAST)
        small = f.agent(m.port, "small", "--max-clusters", "1", command=self.idle)
        big = f.agent(m.port, "big", command=self.idle)
        wait_running(m, 20)
        line = small.wait_log(r"need 1 more clusters than --max-clusters 1 allows", 15)
        small.wait_log(r"ready: all 10 assigned", 15)
        owners = wait_for(lambda: (lambda o: len(o["small"]) == 10 and o)(shards_by_machine(m)),
                          10, "the shards over the cap moved")
        self.assertEqual(len(owners["big"]), 30, owners)
        self.assertEqual(sorted(owners["small"] + owners["big"]), list(range(40)))
        moved = [int(x) for x in re.search(r"\((\d+) to (\d+)\)", line).groups()]
        self.assertTrue(set(range(moved[0], moved[1] + 1)) <= set(owners["big"]), (line, owners))
        m.wait_log(r"\[small\] 10 shards are in clusters it gave up on; moving them", 5)
        big.wait_log(r"ready: all 30 assigned", 15)
        self.assertEqual(len([1 for _, ss in f.starts() if set(ss) <= set(owners["small"])]), 1)

    def test_failed_summary_is_cut_to_16_kib(self):
        n = 20000

        async def go():
            fm, a, peer, rec = await self.session(
                "wide", n, "--shards-per-cluster", "5000", "--max-clusters", "1",
                command=self.idle)
            await peer.send(OP_CONNECT, {"shards": list(range(n)), "redundant": False})
            beat = await rec.until(
                lambda: [d for _, d in rec.beats if d.get("failed_clusters")], 10,
                "a heartbeat naming the shards over the cap")
            hb = beat[0]
            failed = hb["failed_clusters"]
            self.assertLess(list_bytes(failed), 16384)
            self.assertEqual(len(failed), 1)  # the first group, cut; two more not listed
            first = failed[0]
            self.assertEqual(first["cluster"], -1)
            self.assertTrue(first["over_cap"])
            k = len(first["shards"])
            self.assertGreater(k, 1000)
            self.assertEqual(first["shards"], list(range(5000, 5000 + k)))
            self.assertEqual(first["shards_more"], 5000 - k)
            self.assertEqual(hb["failed_clusters_more"], 2)
            starts = wait_for(self.fleet.starts, 10, "the one cluster to start")
            self.assertEqual([ss for _, ss in starts], [list(range(5000))])
            await rec.close(fm)
            a.signal(signal.SIGTERM)  # MASTER gone: stops at once
            self.assertEqual(a.wait(15), 0, a.log()[-3000:])

        asyncio.run(go())

    def test_many_failed_clusters_are_a_bounded_summary(self):
        async def go():
            fm, a, peer, rec = await self.session(
                "crashy", 80, "--shards-per-cluster", "1", "--restart-backoff", "0",
                "--log-level", "info", command=self.failing)
            await peer.send(OP_CONNECT, {"shards": list(range(70)), "redundant": False})
            beat = await rec.until(
                lambda: [d for _, d in rec.beats if d.get("failed_clusters_more") == 6], 60,
                "a heartbeat with all 70 clusters failed")
            failed = beat[0]["failed_clusters"]
            self.assertEqual(failed, [{"cluster": i, "shards": [i], "exit": 7, "signal": 0}
                                      for i in range(64)])
            self.assertEqual(len(self.fleet.starts()), 70 * 4)  # each: a run, 3 restarts
            self.assertFalse(rec.of(OP_READY))
            await rec.close(fm)
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(15), 0, a.log()[-3000:])

        asyncio.run(go())

    def test_out_of_range_shards_are_one_log_line(self):
        async def go():
            fm, a, peer, rec = await self.session("ranges", 8, command=self.idle)
            await peer.send(OP_CONNECT, {"shards": [0, 1, 100, 7, 300, 200], "redundant": False})
            ready = await rec.until(lambda: rec.of(OP_READY), 10, "ready")
            self.assertEqual(ready[0]["shards"], [0, 1, 7])
            log = a.log()
            self.assertEqual(len(re.findall(r"not below shard_count", log)), 1, log)
            self.assertIn("connect names 3 shards not below shard_count 8 (100 to 300); ignored",
                          log)
            await peer.send(OP_INFO, {})
            info = await rec.until(lambda: rec.of(OP_INFO), 5, "an info report")
            self.assertEqual(info[0]["shards"], [0, 1, 7])
            await rec.close(fm)
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(15), 0, a.log()[-3000:])

        asyncio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
