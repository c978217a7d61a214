"""Session handoff at MASTER, with scripted CONTROLs (python3-websockets):
sessions are kept per shard, a planned move waits for the sender's
`stopped` (or the handoff timeout) and hands the sessions to the receiver,
a dead machine's shards move at once with theirs, and bad or foreign
session reports are ignored.
"""
import asyncio
import subprocess
import unittest
import urllib.error
import urllib.request

from harness import BIN, OP_OFFLOAD, Control, Master, machine, run, send, status


def post(m, path, auth=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (m.port, path), data=b"",
                                 method="POST", headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

TIMING = ["--heartbeat-interval", "1", "--heartbeat-grace", "1", "--handshake-timeout", "2",
          "--collect-window", "30", "--reconnect-grace", "0.5"]
URL = "wss://gateway.example/resume"


def master(shards, expected, *extra):
    return Master("--shards", str(shards), "--expected-machines", str(expected), *TIMING, *extra)


async def fleet(m, *specs):
    xs = []
    for name, kw in specs:
        x = Control(m, name, identify_queue=True, **kw)
        await x.start()
        xs.append(x)
    return xs


def sess(shards, seq=10):
    return [(s, "sid%d" % s, seq + s, URL) for s in shards]


class Handoff(unittest.TestCase):

    def test_a_drain_stops_first_then_hands_the_sessions_over(self):
        with master(6, 2) as m:
            async def go():
                a, b = await fleet(m, ("a", {"handoff": True}), ("b", {"handoff": True}))
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                await a.sessions(sess(sa))
                await send(a.ws, OP_OFFLOAD, {})
                self.assertEqual((await a.next_connect())["shards"], [])  # the sender first
                await b.no_connect(0.5)  # b waits for a's stop
                await a.sessions(sess(sa, seq=100))  # the final SESSION lines
                await a.stopped(sa)
                d = await b.next_connect(3)
                self.assertEqual(sorted(d["shards"]), list(range(6)))
                self.assertEqual(sorted(int(k) for k in d["sessions"]), sa)
                for s in sa:
                    self.assertEqual(d["sessions"][str(s)],
                                     {"session_id": "sid%d" % s, "seq": 100 + s, "resume_url": URL})
                for x in (a, b):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] stopped 3 shards; their new machines start them")
            m.wait_log(r"\[b\] connect: 6 shards \(0-5\), with sessions to resume")
            m.stop()

    def test_the_handoff_timeout_bounds_the_wait(self):
        with master(4, 2, "--handoff-timeout", "1") as m:
            async def go():
                a, b = await fleet(m, ("a", {"handoff": True}), ("b", {}))
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                await send(a.ws, OP_OFFLOAD, {})
                await a.next_connect()
                await b.no_connect(0.6)
                d = await b.next_connect(3)  # after the timeout, without a stop
                self.assertTrue(set(sa) <= set(d["shards"]))
                self.assertNotIn("sessions", d)  # none were reported
                for x in (a, b):
                    await x.close()
            run(go())
            m.wait_log(r"\[a\] did not confirm the stop of shard \d+ within the handoff timeout")
            m.stop()

    def test_a_sender_without_handoff_is_not_waited_for(self):
        with master(4, 2) as m:
            async def go():
                a, b = await fleet(m, ("a", {}), ("b", {}))
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                await a.sessions(sess(sa))
                await send(a.ws, OP_OFFLOAD, {})
                d = await b.next_connect(2)
                self.assertEqual(sorted(int(k) for k in d["sessions"]), sa)
                for x in (a, b):
                    await x.close()
            run(go())
            m.stop()

    def test_a_dead_machine_moves_at_once_with_its_sessions(self):
        with master(4, 3) as m:
            async def go():
                a, b, s = await fleet(m, ("a", {"handoff": True}), ("b", {}),
                                      ("s", {"standby": True}))
                sa = (await a.next_connect())["shards"]
                await b.next_connect()
                await s.next_connect()
                await a.sessions(sess(sa, seq=7))
                await asyncio.sleep(0.2)
                await a.drop()
                d = await s.next_connect(4)  # after the grace; no stop to wait for
                self.assertEqual(sorted(d["shards"]), sa)
                self.assertEqual(d["sessions"][str(sa[0])]["seq"], 7 + sa[0])
                for x in (b, s):
                    await x.close()
            run(go())
            m.stop()

    def test_bad_and_foreign_session_reports_are_ignored(self):
        with master(4, 2) as m:
            async def go():
                a, b = await fleet(m, ("a", {}), ("b", {}))
                sa = (await a.next_connect())["shards"]
                sb = (await b.next_connect())["shards"]
                await a.sessions(sess(sb, seq=999))  # b's shards: not a's to report
                await send(a.ws, 14, {"sessions": [{"shard": sa[0], "session_id": "bad id",
                                                    "seq": 1, "resume_url": URL}, 5]})
                await send(a.ws, 14, {"sessions": "x"})
                self.assertEqual((await a.next_error())["code"], 4004)
                await a.sessions(sess(sa))
                await asyncio.sleep(0.2)
                await a.drop()
                d = await b.next_connect(4)
                self.assertEqual(sorted(int(k) for k in d["sessions"]), sa)  # b's own: none
                await b.close()
            run(go())
            m.wait_log(r"\[a\] sessions: 0 kept, 0 invalid, 2 for shards it does not run")
            m.wait_log(r"\[a\] sessions: 0 kept, 2 invalid, 0 for shards it does not run")
            m.stop()


    def test_rebalance_gives_a_returning_machine_its_share_with_handoffs(self):
        with master(6, 2, "--rebalance-batch", "2") as m:
            async def go():
                a, b = await fleet(m, ("a", {"handoff": True}), ("b", {"handoff": True}))
                sa = (await a.next_connect())["shards"]
                sb = (await b.next_connect())["shards"]
                await a.sessions(sess(sa))
                await b.sessions(sess(sb))
                await a.drop()  # a dies; b takes everything
                self.assertEqual(sorted((await b.next_connect(4))["shards"]), list(range(6)))
                c, = await fleet(m, ("c", {"handoff": True}))  # a's replacement
                self.assertEqual((await c.next_connect())["shards"], [])
                self.assertEqual(machine(status(m), "c")["role"], "standby")
                code, body = await asyncio.get_running_loop().run_in_executor(
                    None, post, m, "/rebalance")
                self.assertEqual((code, body), (202, "rebalance started\n"))
                got = []
                while len(got) < 3:  # batches of 2: b stops first, then c starts
                    d = await b.next_connect(4)
                    moved = sorted(set(range(6)) - set(d["shards"]) - set(got))
                    await c.no_connect(0.3)
                    await b.stopped(moved)
                    dc = await c.next_connect(4)
                    self.assertEqual(sorted(int(k) for k in dc["sessions"]), moved)
                    got = dc["shards"]
                st = status(m)
                self.assertEqual(len(machine(st, "c")["shards"]), 3)
                self.assertEqual(machine(st, "c")["role"], "active")
                self.assertNotIn("rebalancing", st)
                for x in (b, c):
                    await x.close()
            run(go())
            m.wait_log(r"rebalance done: the fleet matches the plan after 2 steps")
            m.stop()

    def test_rebalance_requests_are_checked(self):
        with Master("--shards", "2", "--collect-window", "30", auth="s3cret") as m:
            self.assertEqual(post(m, "/rebalance")[0], 401)
            self.assertEqual(post(m, "/rebalance", "Bearer s3cret"), (409, "not running yet\n"))
            req = urllib.request.Request("http://127.0.0.1:%d/rebalance" % m.port)
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=5)
            self.assertEqual(e.exception.code, 405)
            # the CLI form: the secret from the environment, never printed
            r = subprocess.run([BIN, "rebalance", "--master", "http://127.0.0.1:%d" % m.port],
                               env={"DISCLUSTER_AUTH": "s3cret"}, capture_output=True, text=True)
            self.assertEqual(r.returncode, 1)
            self.assertIn("HTTP 409", r.stderr)
            self.assertNotIn("s3cret", r.stdout + r.stderr)
            r = subprocess.run([BIN, "rebalance", "--master", "ftp://x"], capture_output=True)
            self.assertEqual(r.returncode, 2)
            self.assertEqual(status(m, {"Authorization": "s3cret"})["state"], "collecting")
            m.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
