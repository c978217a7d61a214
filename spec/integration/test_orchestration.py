"""Orchestration: allocation, connect to every machine at once, failover, resume, offload,
late joiners, unassigned shards, MASTER restart adoption, fatal shutdown.

The real binary with a fixed shard count (no Discord) and scripted CONTROLs.
"""
import asyncio
import json
import time
import unittest

from harness import (OP_CONNECT, OP_FATAL, OP_OFFLOAD, OP_SHUTDOWN, Control, Master,
                     machine, run, send, status)

TIMING = ["--heartbeat-interval", "1", "--heartbeat-grace", "1", "--handshake-timeout", "2"]


def master(shards, expected, *extra):
    return Master("--shards", str(shards), "--expected-machines", str(expected),
                  "--collect-window", "30", *TIMING, *extra)


async def fleet(m, *controls):
    for c in controls:
        await c.start()
    return controls


class Orchestration(unittest.TestCase):

    def test_allocation_is_proportional_and_not_in_turn(self):
        with master(12, 3) as m:
            async def go():
                a = Control(m, "a", cores=8, auto_ready=False)
                b = Control(m, "b", cores=4, auto_ready=False)
                c = Control(m, "c", cores=16, standby=True)
                await fleet(m, a, b, c)
                # every machine gets its connect at once: pacing is the identify queue's job
                da = await a.next_connect()
                self.assertEqual(da, {"shards": list(range(8)), "redundant": False})
                db = await b.next_connect()
                self.assertEqual(db, {"shards": list(range(8, 12)), "redundant": False})
                dc = await c.next_connect()
                self.assertEqual(dc, {"shards": [], "redundant": True})
                await asyncio.sleep(0.2)
                st = status(m)
                self.assertEqual(st["state"], "connecting")  # until a and b are ready
                self.assertEqual(machine(st, "a")["connect"], "acked")
                await b.ready()
                await asyncio.sleep(0.2)
                self.assertEqual(status(m)["state"], "connecting")
                await a.ready()
                await asyncio.sleep(0.2)
                st = status(m)
                self.assertEqual(st["state"], "running")
                self.assertEqual(st["unassigned"], [])
                self.assertTrue(machine(st, "c")["standby"])
                for x in (a, b, c):
                    self.assertEqual(len(x.ops(OP_CONNECT)), 1)
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] connect: 8 shards \(0-7\)")
            self.assertEqual(m.stop(), 0)

    def test_load_average_moves_the_split(self):
        with master(10, 2) as m:
            async def go():
                a = Control(m, "a", cores=4, loadavg=4.0)
                b = Control(m, "b", cores=4, loadavg=1.0)
                await fleet(m, a, b)
                self.assertEqual(len((await a.next_connect())["shards"]), 2)
                self.assertEqual(len((await b.next_connect())["shards"]), 8)
                for x in (a, b):
                    await x.close()
            run(go())
            m.stop()

    def test_a_machine_that_never_readies_holds_nobody_back(self):
        with master(4, 2, "--connect-timeout", "1") as m:
            async def go():
                a = Control(m, "a", auto_ready=False)
                b = Control(m, "b")
                await fleet(m, a, b)
                await a.next_connect()
                t0 = time.monotonic()
                await b.next_connect(4)
                self.assertLess(time.monotonic() - t0, 0.9)  # not after a's timeout
                await asyncio.sleep(1.5)
                st = status(m)
                self.assertEqual(machine(st, "a")["connect"], "late")
                self.assertEqual(machine(st, "b")["connect"], "ready")
                self.assertEqual(st["state"], "running")
                # a late ready is still taken
                await a.ready()
                await asyncio.sleep(0.2)
                self.assertEqual(machine(status(m), "a")["connect"], "ready")
                for x in (a, b):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] not ready within the connect timeout")
            m.wait_log(r"\[a\] ready with 2 shards \(after the connect timeout\)")
            m.stop()

    def test_heartbeat_timeout_fails_over_to_the_standby(self):
        with master(6, 3) as m:
            async def go():
                a = Control(m, "a")
                b = Control(m, "b")
                s = Control(m, "s", standby=True)
                await fleet(m, a, b, s)
                sa = (await a.next_connect())["shards"]
                sb = (await b.next_connect())["shards"]
                self.assertEqual(await s.next_connect(), {"shards": [], "redundant": True})
                a.beating = False
                self.assertEqual(await a.closed(5), 4001)
                d = await s.next_connect(3)
                self.assertEqual(d, {"shards": sa, "redundant": False})
                await b.no_connect(0.3)
                st = status(m)
                self.assertIsNone(machine(st, "a"))
                self.assertEqual(machine(st, "s")["shards"], sa)
                self.assertEqual(machine(st, "b")["shards"], sb)
                for x in (b, s):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] failed: heartbeat timeout; moving its 3 shards")
            m.stop()

    def test_reconnect_inside_the_grace_keeps_the_shards(self):
        with master(6, 2, "--reconnect-grace", "3") as m:
            async def go():
                a = Control(m, "a")
                b = Control(m, "b")
                await fleet(m, a, b)
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                a.loadavg = 2.5  # its heartbeats (every second) say so from now on
                for _ in range(40):
                    if machine(status(m), "a")["loadavg"] == 2.5:
                        break
                    await asyncio.sleep(0.1)
                await a.drop()
                await asyncio.sleep(0.5)
                st = status(m)
                self.assertEqual(machine(st, "a")["state"], "disconnected")
                self.assertEqual(machine(st, "a")["shards"], sa)
                # the last heartbeat's load average outlives the connection
                self.assertEqual(machine(st, "a")["loadavg"], 2.5)
                a2 = Control(m, "a", loadavg=0.75)
                await a2.start()
                self.assertEqual(a2.init["d"]["shard_count"], 6)
                self.assertEqual(await a2.next_connect(), {"shards": sa, "redundant": False})
                await b.no_connect(0.3)
                self.assertEqual(machine(status(m), "a")["state"], "live")
                self.assertEqual(machine(status(m), "a")["loadavg"], 0.75)  # info's
                for x in (a2, b):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] reconnected inside the grace")
            m.stop()

    def test_no_reconnect_fails_over_to_survivors_after_the_grace(self):
        with master(9, 3, "--reconnect-grace", "0.5") as m:
            async def go():
                a, b, c = Control(m, "a"), Control(m, "b"), Control(m, "c")
                await fleet(m, a, b, c)
                sa = (await a.next_connect())["shards"]
                sb = (await b.next_connect())["shards"]
                sc = (await c.next_connect())["shards"]
                await a.drop()
                nb = (await b.next_connect(4))["shards"]
                nc = (await c.next_connect(4))["shards"]
                # survivors keep what they ran and split a's shards
                self.assertTrue(set(sb) <= set(nb) and set(sc) <= set(nc))
                self.assertEqual(sorted(nb + nc), list(range(9)))
                self.assertEqual(sorted(set(nb + nc) - set(sb + sc)), sa)
                for x in (b, c):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] failed: no reconnect within 0.5s")
            m.stop()

    def test_late_joiner_is_standby_and_takes_unassigned_shards(self):
        with master(4, 1, "--reconnect-grace", "0") as m:
            async def go():
                a = Control(m, "a")
                await fleet(m, a)
                self.assertEqual((await a.next_connect())["shards"], [0, 1, 2, 3])
                late = Control(m, "late")
                await late.start()
                self.assertEqual(await late.next_connect(), {"shards": [], "redundant": True})
                self.assertTrue(machine(status(m), "late")["standby"])
                await late.close()
                await asyncio.sleep(0.3)
                await a.drop()
                await asyncio.sleep(0.5)
                st = status(m)
                self.assertEqual(st["unassigned"], [0, 1, 2, 3])
                self.assertEqual(st["machines"], [])
                nxt = Control(m, "next")
                await nxt.start()
                self.assertEqual(await nxt.next_connect(), {"shards": [0, 1, 2, 3], "redundant": False})
                self.assertEqual(status(m)["unassigned"], [])
                await nxt.close()
            run(go())
            m.wait_log(r"4 shards stay unassigned")
            m.stop()

    def test_offload_drains_the_sender(self):
        with master(6, 2) as m:
            async def go():
                a, b = Control(m, "a"), Control(m, "b")
                await fleet(m, a, b)
                await a.next_connect()
                await b.next_connect()
                await send(a.ws, OP_OFFLOAD, {})
                self.assertEqual(await b.next_connect(), {"shards": list(range(6)), "redundant": False})
                self.assertEqual(await a.next_connect(), {"shards": [], "redundant": True})
                st = status(m)
                self.assertEqual(machine(st, "a")["shards"], [])
                self.assertTrue(machine(st, "a")["standby"])
                for x in (a, b):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] offload: moving its 3 shards")
            m.stop()

    def test_fatal_shuts_the_fleet_down(self):
        with master(4, 2) as m:
            async def go():
                a, b = Control(m, "a"), Control(m, "b")
                await fleet(m, a, b)
                await a.next_connect()
                await b.next_connect()
                await send(b.ws, OP_FATAL, {"code": 4014, "message": "Disallowed intent(s)", "shard": 3})
                for x in (a, b):
                    self.assertEqual(await x.closed(5), 1000)
                    sd = x.ops(OP_SHUTDOWN)
                    self.assertEqual(len(sd), 1)
                    self.assertEqual(sd[0]["d"]["code"], 4014)
                    self.assertIn("Disallowed intent(s)", sd[0]["d"]["reason"])
            run(go())
            rc = m.wait(10)
            self.assertNotEqual(rc, 0)
            line = m.wait_log(r"fatal Discord error 4014")
            self.assertIn("[b]", line)
            self.assertIn("shard 3: Disallowed intent(s)", line)

    def test_restart_adopts_what_the_fleet_runs(self):
        with master(12, 3) as m:
            async def go():
                a = Control(m, "a", cores=1, shards=[0, 1, 2, 3, 4, 5, 6])
                b = Control(m, "b", cores=64, shards=[6, 7, 8])
                c = Control(m, "c", cores=1, shards=[11])
                await fleet(m, a, b, c)
                ca = (await a.next_connect())["shards"]
                cb = (await b.next_connect())["shards"]
                cc = (await c.next_connect())["shards"]
                self.assertEqual(ca, [0, 1, 2, 3, 4, 5, 6])  # a's id wins shard 6
                self.assertTrue({7, 8} <= set(cb))
                self.assertTrue({11} <= set(cc))
                self.assertEqual(sorted(ca + cb + cc), list(range(12)))
                for x in (a, b, c):
                    await x.close()
            run(go())
            m.wait_log(r"\[b\] reports 1 shards also reported by a lower id \(first: 6, kept by a\)")
            m.wait_log(r"adopted 10 of 12 shards")
            m.stop()

    def test_a_huge_report_is_one_line(self):
        # 120,000 shards reported where the fleet has 4: one summary line, no stall
        with master(4, 1) as m:
            async def go():
                a = Control(m, "a", shards=list(range(120000)))
                await fleet(m, a)
                self.assertEqual((await a.next_connect(10))["shards"], [0, 1, 2, 3])
                await a.close()
            run(go())
            m.wait_log(r"\[a\] reports 119996 shards beyond the 4 shards \(first: 4\); ignored")
            self.assertEqual(m.count(r"beyond the"), 1)
            m.stop()

    def test_consistent_report_moves_nothing(self):
        with master(6, 2) as m:
            async def go():
                a = Control(m, "a", cores=1, shards=[3, 4, 5])
                b = Control(m, "b", cores=32, shards=[0, 1, 2])
                await fleet(m, a, b)
                self.assertEqual((await a.next_connect())["shards"], [3, 4, 5])
                self.assertEqual((await b.next_connect())["shards"], [0, 1, 2])
                for x in (a, b):
                    await x.close()
            run(go())
            m.stop()

    def test_status_document(self):
        with master(3, 1) as m:
            async def go():
                a = Control(m, "a", cores=2, loadavg=0.5)
                await fleet(m, a)
                await a.next_connect()
                await asyncio.sleep(0.6)
                st = status(m)
                self.assertEqual(st["state"], "running")
                self.assertEqual(st["shard_count"], 3)
                self.assertEqual(st["max_concurrency"], 1)
                self.assertNotIn("session_start_limit", st)  # fixed shards: Discord not asked
                ma = machine(st, "a")
                for key in ("id", "cores", "loadavg", "standby", "state", "shards",
                            "last_heartbeat_age_ms"):
                    self.assertIn(key, ma)
                self.assertEqual(ma["cores"], 2)
                self.assertLess(ma["last_heartbeat_age_ms"], 1500)
                await a.close()
            run(go())
            m.stop()

    def test_collection_window_ends_on_time_without_expected_count(self):
        with Master("--shards", "2", "--collect-window", "0.5", *TIMING) as m:
            async def go():
                a = Control(m, "a")
                await fleet(m, a)
                t0 = time.monotonic()
                self.assertEqual((await a.next_connect(3))["shards"], [0, 1])
                self.assertLess(time.monotonic() - t0, 2.5)
                await a.close()
            run(go())
            m.stop()

    def test_empty_window_gives_shards_to_the_first_joiner(self):
        with Master("--shards", "2", "--collect-window", "0.2", *TIMING) as m:
            m.wait_log(r"no CONTROL connected")
            self.assertEqual(status(m)["state"], "collecting")

            async def go():
                a = Control(m, "a")
                await fleet(m, a)
                self.assertEqual((await a.next_connect(3))["shards"], [0, 1])
                await a.close()
            run(go())
            m.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
