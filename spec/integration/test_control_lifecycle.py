"""discluster-control lifecycle against the real MASTER: a MASTER restart
is resumed without moving shards; SIGTERM drains through `offload`; the
reconnect backs off from about 1 s, so a short MASTER outage is short."""
import asyncio
import re
import signal
import time
import unittest

from control_harness import (MASTER_FAST, FakeMaster, Fleet, alive, free_port, initialise,
                             shards_by_machine, wait_for, wait_running)

OP_INFO, OP_OFFLOAD, OP_INITIALISE, OP_CONNECT, OP_ACK, OP_READY = 0, 3, 5, 6, 8, 10


class Lifecycle(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()

    def tearDown(self):
        self.fleet.close()

    def test_master_restart_resumes_without_moving_shards(self):
        f = self.fleet
        port = free_port()
        args = ["--shards", "16", "--collect-window", "10", "--expected-machines", "3",
                "--listen", "127.0.0.1:%d" % port] + MASTER_FAST
        m = f.master(*args)
        agents = [f.agent(port, "r1"), f.agent(port, "r2"), f.agent(port, "r3", "--standby")]
        wait_running(m)
        for x in agents[:2]:
            x.wait_log(r"ready: all", 5)
        before = shards_by_machine(m)
        self.assertEqual(before["r3"], [])
        pids = [pid for pid, _ in f.starts()]
        marks = [x.mark() for x in agents]
        self.assertEqual(m.stop(), 0)
        for x, mk in zip(agents, marks):
            x.wait_log(r"lost MASTER", 5, start=mk)
        time.sleep(0.5)  # a few failed attempts while MASTER is away
        for pid in pids:
            self.assertTrue(alive(pid))
        m2 = f.master(*args)
        wait_running(m2)
        m2.wait_log(r"adopted 16 of 16 shards", 5)
        self.assertEqual(shards_by_machine(m2), before)
        for x, mk in zip(agents[:2], marks):
            line = x.wait_log(r"connect: \d+ shards", 10, start=mk)
            self.assertRegex(line, r"kept, 0 started, 0 stopped")
            x.wait_log(r"ready: all", 5, start=mk)
        self.assertEqual([pid for pid, _ in f.starts()], pids)  # nothing restarted
        for pid in pids:
            self.assertTrue(alive(pid))
        self.assertEqual(m2.stop(), 0)
        for x in agents:
            x.signal(signal.SIGTERM)  # MASTER is gone: they stop at once
        for x in agents:
            self.assertEqual(x.wait(10), 0, x.log())

    def test_sigterm_drains_through_offload(self):
        f = self.fleet
        m = f.master("--shards", "12", "--collect-window", "10", "--expected-machines", "3",
                     *MASTER_FAST)
        d = f.agent(m.port, "drainer")
        k = f.agent(m.port, "keeper")
        s = f.agent(m.port, "spare", "--standby")
        wait_running(m)
        before = shards_by_machine(m)
        self.assertTrue(before["drainer"])
        d.wait_log(r"ready: all", 5)
        d_pids = [pid for pid, ss in f.starts() if set(ss) <= set(before["drainer"])]
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait(15), 0, d.log())
        log = d.log()
        self.assertIn("offloading %d shards" % len(before["drainer"]), log)
        self.assertIn("connect: 0 shards", log)
        self.assertIn("drained: MASTER moved every shard", log)
        self.assertNotIn("drain timeout", log)
        m.wait_log(r"\[drainer\] offload: moving its %d shards" % len(before["drainer"]), 2)
        for pid in d_pids:
            self.assertFalse(alive(pid))
        after = wait_running(m)
        owners = {x["id"]: sorted(x["shards"]) for x in after["machines"]}
        self.assertEqual(owners["spare"], before["drainer"])  # the standby took them
        self.assertEqual(owners["keeper"], before["keeper"])
        s.wait_log(r"ready: all %d" % len(before["drainer"]), 10)
        self.assertIsNone(k.proc.poll())

    def test_drain_timeout_and_second_signal(self):
        f = self.fleet

        async def go():
            fm = FakeMaster()
            await fm.start()
            # MASTER never answers the offload: the drain times out.
            a = f.agent(fm.port, "slow-drain", "--drain-timeout", "0.5")
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(4))
            await peer.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await peer.recv(OP_READY)
            t0 = time.monotonic()
            a.signal(signal.SIGTERM)
            await peer.recv(OP_OFFLOAD)
            while a.proc.poll() is None and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            self.assertEqual(a.wait(5), 0, a.log())
            self.assertGreaterEqual(time.monotonic() - t0, 0.5)
            self.assertIn("drain timeout", a.log())
            # A second signal during the drain stops at once.
            b = f.agent(fm.port, "impatient", "--drain-timeout", "30")
            peer2 = await fm.accept()
            await peer2.recv(OP_INFO)
            await peer2.send(OP_INITIALISE, initialise(4))
            await peer2.send(OP_CONNECT, {"shards": [0, 1], "redundant": False})
            await peer2.recv(OP_READY)
            b.signal(signal.SIGTERM)
            await peer2.recv(OP_OFFLOAD)
            t0 = time.monotonic()
            b.signal(signal.SIGINT)
            while b.proc.poll() is None and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            self.assertEqual(b.wait(5), 0, b.log())
            self.assertLess(time.monotonic() - t0, 5)
            peer.release()
            peer2.release()
            await fm.stop()
            for pid, _ in f.starts():
                wait_for(lambda: not alive(pid), 5, "cluster %d gone" % pid)

        asyncio.run(go())

    def test_short_master_outage_is_short_for_the_agent(self):
        f = self.fleet

        async def go():
            fm = FakeMaster()
            await fm.start()
            port = fm.port
            # --retry is the cap of the backoff: the default 30 s must not be the wait.
            a = f.agent(port, "bouncer", "--retry", "30")
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(4))
            await peer.send(OP_CONNECT, {"shards": [0, 1], "redundant": False})
            await peer.recv(OP_READY)
            mark = a.mark()
            peer.release()
            await fm.stop()  # MASTER goes away for half a second
            a.wait_log(r"lost MASTER", 5, start=mark)
            await asyncio.sleep(0.5)
            fm2 = FakeMaster()
            await fm2.start(port)
            t0 = time.monotonic()
            peer2 = await fm2.accept(timeout=15)
            back = time.monotonic() - t0
            hello = await peer2.recv(OP_INFO)
            self.assertEqual(hello["d"]["shards"], [0, 1])
            # Back at the first backoff attempt (0.6-1.1 s after the loss), or at worst
            # the one after it (1-2 s later): about 2 s, never the 30 s of --retry.
            self.assertLess(back, 2.5, a.log())
            lines = a.log().split("\n")[mark:]
            waits = [float(x) for x in re.findall(r"(?:reconnecting|retrying) in ([\d.]+)s",
                                                  "\n".join(lines))]
            self.assertEqual(waits[0], 0.1)  # at once after losing the session
            self.assertTrue(waits[1:], lines)
            for w in waits[1:]:
                self.assertTrue(0.5 <= w <= 2.0, waits)  # then from about 1 s, jittered
            peer2.release()
            await fm2.stop()
            a.signal(signal.SIGTERM)  # MASTER gone: stops at once
            self.assertEqual(a.wait(10), 0, a.log())

        asyncio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
