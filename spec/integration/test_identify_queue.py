"""MASTER's identify queue over the protocol, with scripted CONTROLs
(python3-websockets): pacing per bucket in shard order, refusals (4007),
withdrawn and returned requests, reconnects, fatal codes, failed clusters,
and draining machines that never receive shards.
"""
import asyncio
import unittest

from harness import (OP_FATAL, OP_HEARTBEAT, OP_OFFLOAD, OP_SHUTDOWN, Control, Master,
                     machine, run, send, status)

TIMING = ["--heartbeat-interval", "1", "--heartbeat-grace", "1", "--handshake-timeout", "2",
          "--collect-window", "30"]


def master(shards, expected, *extra):
    return Master("--shards", str(shards), "--expected-machines", str(expected), *TIMING, *extra)


async def queued(m, *names):
    xs = [Control(m, n, identify_queue=True) for n in names]
    for x in xs:
        await x.start()
    return xs


class IdentifyQueue(unittest.TestCase):

    def test_grants_are_paced_per_bucket_in_shard_order(self):
        interval = 0.5
        with master(8, 2, "--max-concurrency", "2", "--identify-interval", str(interval)) as m:
            async def go():
                a, b = await queued(m, "a", "b")
                sa = (await a.next_connect())["shards"]
                sb = (await b.next_connect())["shards"]
                self.assertEqual(sorted(sa + sb), list(range(8)))
                await a.identify(*reversed(sa))  # asked in reverse: granted in shard order
                await b.identify(*reversed(sb))
                async def take(x, n):
                    return [await x.next_grant(10) for _ in range(n)]
                ga, gb = await asyncio.gather(take(a, len(sa)), take(b, len(sb)))
                grants = ga + gb
                grants.sort()
                for bucket in (0, 1):
                    mine = [g for g in grants if g[1] % 2 == bucket]
                    # the first may go before the others arrive; the queued ones go in order
                    self.assertEqual([g[1] for g in mine[1:]], sorted(g[1] for g in mine[1:]))
                    for x, y in zip(mine, mine[1:]):
                        # never closer than the interval, less delivery jitter (the
                        # exact gaps are checked in spec/unit/test_identify.c)
                        self.assertGreater(y[0] - x[0], interval - 0.2)
                st = status(m)
                self.assertEqual(st["identify"]["granted"], 8)
                self.assertEqual(st["identify"]["waiting"], 0)
                for x in (a, b):
                    await x.close()
            run(go())
            m.stop()

    def test_queue_is_visible_in_status(self):
        with master(6, 1, "--identify-interval", "30") as m:
            async def go():
                a, = await queued(m, "a")
                await a.next_connect()
                await a.identify(0, 1, 2)
                await a.next_grant()
                await asyncio.sleep(0.2)
                q = status(m)["identify"]
                self.assertEqual(q["interval_ms"], 30000)
                self.assertEqual(q["reserve"], 10)
                self.assertEqual(q["waiting"], 2)
                self.assertEqual(len(q["buckets"]), 1)
                bk = q["buckets"][0]
                self.assertEqual((bk["bucket"], bk["waiting"], bk["why"]), (0, 2, "interval"))
                self.assertGreater(bk["next_grant_in_ms"], 25000)
                await a.close()
            run(go())
            m.stop()

    def test_a_shard_that_is_not_yours_is_refused_and_the_session_goes_on(self):
        with master(4, 2) as m:
            async def go():
                a, b = await queued(m, "a", "b")
                sa = (await a.next_connect())["shards"]
                sb = (await b.next_connect())["shards"]
                await a.identify(sb[0])
                e = await a.next_error()
                self.assertEqual((e["code"], e["shard"]), (4007, sb[0]))
                await a.identify(99)
                e = await a.next_error()
                self.assertEqual((e["code"], e["shard"]), (4007, 99))
                await send(a.ws, 11, {"shard": "x"})
                self.assertEqual((await a.next_error())["code"], 4004)
                await a.identify(sa[0])  # still served
                self.assertEqual((await a.next_grant())[1], sa[0])
                for x in (a, b):
                    await x.close()
            run(go())
            m.stop()

    def test_withdrawn_requests_and_returned_grants(self):
        with master(3, 1, "--identify-interval", "0.3") as m:
            async def go():
                a, = await queued(m, "a")
                await a.next_connect()
                await a.identify(0, 1, 2)
                self.assertEqual((await a.next_grant())[1], 0)
                await a.release(1)  # withdrawn before its turn
                self.assertEqual((await a.next_grant())[1], 2)
                await a.no_grant(0.5)
                st = status(m)
                self.assertEqual(st["identify"]["granted"], 2)
                await a.release(2)  # returned unused
                await asyncio.sleep(0.2)
                self.assertEqual(status(m)["identify"]["returned"], 1)
                await a.release(2)  # twice: nothing more
                await a.release(77)
                await asyncio.sleep(0.2)
                self.assertEqual(status(m)["identify"]["returned"], 1)
                await a.close()
            run(go())
            m.wait_log(r"\[a\] shard 2: grant returned unused")
            m.stop()

    def test_a_reconnecting_control_asks_again(self):
        with master(2, 1, "--max-concurrency", "1", "--identify-interval", "1",
                    "--reconnect-grace", "5") as m:
            async def go():
                a, = await queued(m, "a")
                await a.next_connect()
                await a.identify(0, 1)
                await a.next_grant()
                await a.drop()  # shard 1's request dies with the connection
                a2, = await queued(m, "a")
                await a2.next_connect()
                await asyncio.sleep(1.2)
                await a2.no_grant(0.2)
                self.assertEqual(status(m)["identify"]["waiting"], 0)
                await a2.identify(1)
                self.assertEqual((await a2.next_grant())[1], 1)
                await a2.close()
            run(go())
            m.stop()

    def test_only_non_reconnectable_codes_are_fatal(self):
        with master(2, 2) as m:
            async def go():
                a, b = await queued(m, "a", "b")
                await a.next_connect()
                await b.next_connect()
                for code in (4000, 4009, 1006, 4015):
                    await send(a.ws, OP_FATAL, {"code": code, "message": "cluster lost it"})
                await asyncio.sleep(0.3)
                self.assertEqual(status(m)["state"], "running")
                self.assertEqual(b.ops(OP_SHUTDOWN), [])
                await send(a.ws, OP_FATAL, {"code": 4013, "message": "invalid intents", "shard": 0})
                await b.closed(5)
                self.assertEqual(b.ops(OP_SHUTDOWN)[0]["d"]["code"], 4013)
            run(go())
            m.wait_log(r"\[a\] cluster failure 4000 .*not fatal")
            self.assertEqual(m.wait(10), 3)

    def test_failed_clusters_are_moved_and_shown(self):
        with master(4, 2) as m:
            async def go():
                a, b = await queued(m, "a", "b")
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                a.beating = False
                await send(a.ws, OP_HEARTBEAT, {"failed_clusters": [
                    {"cluster": 0, "shards": sa[:1], "exit": 1, "signal": 0}]})
                d = await b.next_connect(3)
                self.assertIn(sa[0], d["shards"])
                self.assertEqual((await a.next_connect(3))["shards"], sa[1:])
                st = status(m)
                self.assertEqual(machine(st, "a")["failed_shards"], sa[:1])
                self.assertNotIn(sa[0], machine(st, "a")["shards"])
                # the same report again moves nothing more
                await send(a.ws, OP_HEARTBEAT, {"failed_clusters": [
                    {"cluster": 0, "shards": sa[:1], "exit": 1, "signal": 1}]})
                await a.no_connect(0.4)
                await send(a.ws, OP_HEARTBEAT, {"failed_clusters": []})
                await asyncio.sleep(0.2)
                self.assertNotIn("failed_shards", machine(status(m), "a"))
                for x in (a, b):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] 1 shards are in clusters it gave up on; moving them")
            m.stop()

    def test_an_oversized_or_bad_failed_list_never_voids_a_heartbeat(self):
        # 40 KiB of failed_clusters, then a malformed one: both heartbeats count,
        # so the machine lives on; a bad one is logged (once after each valid one).
        with master(4, 1) as m:
            async def go():
                a, = await queued(m, "a")
                await a.next_connect()
                a.beating = False
                big = [{"cluster": i, "shards": list(range(1000 + 40 * i, 1040 + 40 * i)),
                        "exit": 1, "signal": 0} for i in range(100)]
                for _ in range(8):  # 4 s: twice the heartbeat deadline
                    await send(a.ws, OP_HEARTBEAT, {"failed_clusters": big})
                    await asyncio.sleep(0.25)
                    await send(a.ws, OP_HEARTBEAT, {"failed_clusters": [{"shards": 1}]})
                    await asyncio.sleep(0.25)
                st = status(m)
                self.assertEqual(machine(st, "a")["state"], "live")
                self.assertEqual(machine(st, "a")["shards"], [0, 1, 2, 3])
                self.assertEqual(len(a.ops(OP_SHUTDOWN)), 0)
                await a.close()
            run(go())
            self.assertEqual(m.count(r"heartbeat: ignoring failed_clusters"), 8)
            self.assertEqual(m.count(r"4001"), 0)
            m.stop()

    def test_a_draining_machine_never_receives(self):
        with master(6, 3, "--reconnect-grace", "0.2") as m:
            async def go():
                a, b, c = await queued(m, "a", "b", "c")
                for x in (a, b, c):
                    await x.next_connect()
                await send(a.ws, OP_OFFLOAD, {})
                self.assertEqual((await a.next_connect())["shards"], [])
                await asyncio.sleep(0.2)
                await b.drop()  # b's shards go to c, never to the idle, draining a
                for _ in range(3):
                    d = await c.next_connect(4)
                    if len(d["shards"]) == 6:
                        break
                self.assertEqual(sorted(d["shards"]), list(range(6)))
                await a.no_connect(0.3)
                self.assertTrue(machine(status(m), "a")["draining"])
                for x in (a, c):
                    await x.close()
            run(go())
            m.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
