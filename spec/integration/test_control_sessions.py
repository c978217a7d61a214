"""discluster-control: session handoff, CONTROL side.

The real agent runs the reference cluster (scripts/discluster-cluster)
against the fake Discord (spec/fake_gateway.py, in-process) and a scripted
MASTER (python3-websockets) that grants every identify at Discord's pace.
Checked: SESSION lines relayed in `sessions` (and in full after a
reconnect), a `connect` that removes shards answered with their final
sessions and then `stopped` once the clusters are gone, sessions handed
over in `connect` resumed (SHARD_SESSIONS; no new IDENTIFY), a crashed
cluster resuming its own sessions, regrouping on one machine without
`stopped`, the SIGTERM drain, and --lease-timeout. Every test asserts
Discord's side: no INVALID_SESSION, never two open sessions of a shard.
"""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import websockets  # noqa: E402

from control_harness import CONTROL_BIN, FakeMaster, Fleet, alive, initialise  # noqa: E402
from harness import SRC  # noqa: E402
from fake_gateway import FakeGateway  # noqa: E402

OP_INFO, OP_OFFLOAD, OP_INITIALISE, OP_CONNECT, OP_ACK, OP_READY = 0, 3, 5, 6, 8, 10
OP_IDENTIFY, OP_GRANT, OP_SESSIONS, OP_STOPPED = 11, 12, 14, 15

TOKEN = "fake.sessions.TOKEN-never-logged"
GW_INTERVAL = 0.2  # the fake gateway's identify pace (one bucket)
GRANT_EVERY = 0.3  # the scripted MASTER's: the pace plus a margin

# The reference cluster, recording its environment and pid first.
CLUSTER = """#!/bin/sh
env > "$TEST_DIR/cluster.$$.env"
echo "start $$ $SHARD_IDS" >> "$TEST_DIR/starts"
exec /usr/bin/python3 %s
""" % os.path.join(SRC, "scripts", "discluster-cluster")


class Peer:
    """One agent connection to the scripted MASTER: every packet is kept
    with its arrival time, identify requests are granted in order, one per
    GRANT_EVERY seconds."""

    def __init__(self, ws, done):
        self.ws, self.done = ws, done
        self.packets = []  # (t, o, d)
        self.closed = False
        self.requests = asyncio.Queue()
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._grant())]

    async def _read(self):
        try:
            async for msg in self.ws:
                p = json.loads(msg)
                self.packets.append((time.monotonic(), p["o"], p["d"]))
                if p["o"] == OP_IDENTIFY:
                    await self.requests.put(p["d"]["shard"])
        except websockets.ConnectionClosed:
            pass
        self.closed = True

    async def _grant(self):
        while True:
            shard = await self.requests.get()
            await self.send(OP_GRANT, {"shard": shard})
            await asyncio.sleep(GRANT_EVERY)

    async def send(self, op, d):
        await self.ws.send(json.dumps({"o": op, "d": d}))

    def ops(self, op, since=0):
        return [(t, d) for t, o, d in self.packets[since:] if o == op]

    async def wait(self, op, where=None, since=0, timeout=20):
        """The first packet op (with where(d) true) from index since on."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(since, len(self.packets)):
                t, o, d = self.packets[i]
                if o == op and (where is None or where(d)):
                    return i, t, d
            if time.monotonic() > deadline:
                raise AssertionError("no packet o=%d within %ss; got %r"
                                     % (op, timeout, [(o, d) for _, o, d in self.packets]))
            await asyncio.sleep(0.02)

    def sessions(self, since=0, until=None):
        """{shard: the latest entry relayed} in packets[since:until]."""
        out = {}
        for _, o, d in self.packets[since:until]:
            if o != OP_SESSIONS:
                continue
            for e in d["sessions"]:
                out[e["shard"]] = e
        return out

    async def wait_sessions(self, shards, since=0, timeout=20):
        deadline = time.monotonic() + timeout
        while not set(shards) <= set(self.sessions(since)):
            if time.monotonic() > deadline:
                raise AssertionError("no sessions for %s; got %r" % (shards, self.packets))
            await asyncio.sleep(0.02)
        return self.sessions(since)

    async def close(self):
        for t in self.tasks:
            t.cancel()
        if not self.done.done():
            self.done.set_result(None)
        await self.ws.close()


class Sessions(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        # exec: the agent's cluster pid is the script's, then python's.
        self.cmd = "exec " + self.fleet.script("cluster-rec", CLUSTER)
        self.gw = FakeGateway(token=TOKEN, shards=8, identify_interval=GW_INTERVAL,
                              dispatch_interval=0.2).start()
        self.agents = []

    def tearDown(self):
        for a in self.agents:
            log = a.log()
            self.assertNotIn(TOKEN, log)
            # Session ids are logged at debug level only.
            for sid in [s["session_id"] for s in self.gw.stats()["sessions"].values()]:
                for line in log.split("\n"):
                    if sid in line:
                        self.assertRegex(line, r"^\S+ debug ", line)
        self.fleet.close()
        self.gw.close()

    def check_discord(self):
        st = self.gw.stats()
        self.assertEqual(st["invalid_sessions"], 0, st["identifies"])
        self.assertEqual(list(st["double_sessions"]), [], st["double_sessions"])
        self.assertLessEqual(st["max_open_per_shard"], 1)
        return st

    def open_sessions(self):
        return {int(k): v for k, v in self.gw.stats()["open"].items() if v}

    def started(self, shards):
        """The pid and environment of the latest cluster started with shards."""
        pids = [pid for pid, ss in self.fleet.starts() if ss == shards]
        self.assertTrue(pids, (shards, self.fleet.starts()))
        return pids[-1], self.fleet.envs()[pids[-1]]

    def shard_sessions(self, env):
        return json.loads(env["SHARD_SESSIONS"]) if "SHARD_SESSIONS" in env else None

    async def machine(self, fm, name, args=(), env=None, command=None):
        a = self.fleet.agent(fm.port, name, "--shards-per-cluster", "2", *args,
                             command=command or self.cmd, env=env)
        self.agents.append(a)
        return a, await self.accept(fm)

    async def accept(self, fm):
        ws, done = await asyncio.wait_for(fm.conns.get(), 10)
        return Peer(ws, done)

    async def session(self, peer, shards, sessions=None):
        """initialise, then connect with shards (and sessions)."""
        await peer.wait(OP_INFO)
        await peer.send(OP_INITIALISE, initialise(8, token=TOKEN, gateway_url=self.gw.url))
        d = {"shards": shards, "redundant": False}
        if sessions is not None:
            d["sessions"] = sessions
        await peer.send(OP_CONNECT, d)
        await peer.wait(OP_READY, where=lambda d: d["shards"] == shards)

    def test_lease_option(self):
        out = subprocess.run([CONTROL_BIN, "--help"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0)
        self.assertIn("--lease-timeout S", out.stdout)
        self.assertIn("SHARD_SESSIONS", out.stdout)
        self.assertIn("SESSION <shard> <session_id> <seq> <resume_url>", out.stdout)
        for bad in ("-1", "x", "", "nan", "1e99"):
            out = subprocess.run([CONTROL_BIN, "--master", "ws://127.0.0.1:1",
                                  "--cluster-command", "true", "--lease-timeout", bad],
                                 capture_output=True, text=True, timeout=10)
            self.assertEqual(out.returncode, 2, bad)
            self.assertIn("--lease-timeout: '%s' is not a usable number of seconds" % bad,
                          out.stderr)

    def test_bad_session_lines_are_ignored(self):
        # A cluster printing SESSION lines of every kind; READY last, so that
        # the lines before it have been read when `ready` arrives.
        cmd = self.fleet.script("liar", r"""#!/bin/sh
echo "SESSION 0 good-id 5 ws://127.0.0.1:1/resume"
echo "SESSION 9 elsewhere 1 ws://127.0.0.1:1/resume"
echo "SESSION 1 secret-malformed"
echo "SESSION 1 secret-url 7 http://127.0.0.1:1"
echo "SESSION 1 good-too 2 wss://resume.example extra"
echo "SESSION 1 good-too 2 wss://resume.example"
echo READY
exec cat >/dev/null
""")

        async def go():
            fm = FakeMaster()
            await fm.start()
            a, peer = await self.machine(fm, "liar", command="exec " + cmd)
            await self.session(peer, [0, 1])
            got = await peer.wait_sessions([0, 1])
            self.assertEqual(got[0], {"shard": 0, "session_id": "good-id", "seq": 5,
                                      "resume_url": "ws://127.0.0.1:1/resume"})
            self.assertEqual(got[1], {"shard": 1, "session_id": "good-too", "seq": 2,
                                      "resume_url": "wss://resume.example"})
            self.assertEqual(a.count(r"warn .*cluster 0 printed a malformed SESSION line; "
                                     r"ignored"), 3)
            a.wait_log(r"debug .*cluster 0: SESSION for shard 9, not one of its shards; ignored")
            self.assertNotIn("secret-", a.log())
            await peer.close()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(15), 0, a.log())

        asyncio.run(go())

    def test_relayed_coalesced_and_again_after_reconnect(self):
        async def go():
            fm = FakeMaster()
            await fm.start()
            a, peer = await self.machine(fm, "relay")
            await self.session(peer, [0, 1, 2, 3])
            got = await peer.wait_sessions([0, 1, 2, 3])
            gw = self.gw.stats()["sessions"]
            for s in range(4):
                self.assertEqual(got[s]["session_id"], gw[str(s)]["session_id"])
                self.assertRegex(got[s]["resume_url"], r"^ws://127\.0\.0\.1:\d+/resume$")
                self.assertGreaterEqual(got[s]["seq"], 1)
            self.assertEqual(self.gw.stats()["identify_count"], 4)
            # Seq moves; the cluster reports it every 5 s: relayed again,
            # never two packets within a second.
            await peer.wait(OP_SESSIONS, where=lambda d: any(e["seq"] > got[e["shard"]]["seq"]
                                                             for e in d["sessions"]), timeout=15)
            ts = [t for t, _ in peer.ops(OP_SESSIONS)]
            self.assertTrue(all(y - x >= 0.95 for x, y in zip(ts, ts[1:])), ts)
            for _, d in peer.ops(OP_SESSIONS):
                self.assertEqual(len({e["shard"] for e in d["sessions"]}), len(d["sessions"]))
                self.assertLessEqual(len(d["sessions"]), 1000)
            self.assertFalse(peer.ops(OP_STOPPED))
            # MASTER restarts: after initialise, every session again, at once.
            await peer.close()
            peer = await self.accept(fm)
            _, _, info = await peer.wait(OP_INFO)
            self.assertEqual(info["shards"], [0, 1, 2, 3])
            await peer.send(OP_INITIALISE, initialise(8, token=TOKEN, gateway_url=self.gw.url))
            i, _, d = await peer.wait(OP_SESSIONS)
            self.assertEqual(sorted(e["shard"] for e in d["sessions"]), [0, 1, 2, 3])
            self.assertFalse(peer.ops(OP_STOPPED))
            await peer.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await peer.wait(OP_READY, where=lambda d: d["shards"] == [0, 1, 2, 3])
            self.assertEqual(len(self.fleet.starts()), 2)  # the clusters kept running
            st = self.check_discord()
            self.assertEqual((st["identify_count"], st["resumed_count"]), (4, 0))
            await peer.close()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(15), 0, a.log())

        asyncio.run(go())

    def test_removed_shards_stop_then_resume_elsewhere(self):
        async def go():
            fm = FakeMaster()
            await fm.start()
            # An inherited SHARD_SESSIONS never reaches a cluster.
            a, peer = await self.machine(fm, "old", env={"SHARD_SESSIONS": json.dumps(
                {"2": {"session_id": "stale", "seq": 1, "resume_url": self.gw.url}})})
            await self.session(peer, [0, 1, 2, 3])
            await peer.wait_sessions([0, 1, 2, 3])
            first_env = self.started([2, 3])[1]
            self.assertNotIn("SHARD_SESSIONS", first_env)  # nothing to resume yet
            pid23, _ = self.started([2, 3])
            mark = len(peer.packets)
            await peer.send(OP_CONNECT, {"shards": [0, 1], "redundant": False})
            i, _, stopped = await peer.wait(OP_STOPPED, since=mark)
            # When `stopped` arrives the cluster is gone, its gateway sessions closed.
            self.assertFalse(alive(pid23))
            self.assertNotIn(2, self.open_sessions())
            self.assertNotIn(3, self.open_sessions())
            self.assertEqual(stopped, {"shards": [2, 3]})
            # Its final sessions (those that changed since the last
            # `sessions`) came first: nothing of 2 and 3 follows `stopped`.
            final = peer.sessions(0, i)
            gw = self.gw.stats()["sessions"]
            for s in (2, 3):
                self.assertEqual(final[s]["session_id"], gw[str(s)]["session_id"])
                self.assertLessEqual(final[s]["seq"], gw[str(s)]["seq"])
            self.assertFalse({2, 3} & set(peer.sessions(i)))
            self.assertEqual(len(peer.ops(OP_STOPPED)), 1)
            a.wait_log(r"stopped: the 2 shards MASTER moved away are stopped \[2,3\]", 5)
            identified = self.gw.stats()["identify_count"]

            # Another machine gets them with their sessions (plus entries it
            # must ignore): its cluster resumes both, no IDENTIFY.
            b, peer_b = await self.machine(fm, "new")
            handed = {str(s): {k: final[s][k] for k in ("session_id", "seq", "resume_url")}
                      for s in (2, 3)}
            handed["5"] = dict(handed["2"])  # not in the connect
            handed["x"] = {}
            await self.session(peer_b, [2, 3], handed)
            b.wait_log(r"connect: 2 handed-over sessions ignored", 5)
            b.wait_log(r"connect hands over 2 sessions to resume", 5)
            env = self.started([2, 3])[1]
            self.assertEqual(self.shard_sessions(env),
                             {k: v for k, v in handed.items() if k in ("2", "3")})
            st = self.check_discord()
            self.assertEqual(st["identify_count"], identified)
            self.assertEqual(st["resumed_count"], 2)
            self.assertEqual([r["outcome"] for r in st["resumes"]], ["resumed", "resumed"])
            self.assertFalse(peer_b.ops(OP_IDENTIFY))
            # The new machine relays the resumed sessions: same ids.
            got = await peer_b.wait_sessions([2, 3])
            for s in (2, 3):
                self.assertEqual(got[s]["session_id"], final[s]["session_id"])
            for p in (peer, peer_b):
                await p.close()
            await fm.stop()
            for x in (a, b):
                x.signal(signal.SIGTERM)
                self.assertEqual(x.wait(15), 0, x.log())

        asyncio.run(go())

    def test_regroup_and_crash_resume_own_sessions(self):
        async def go():
            fm = FakeMaster()
            await fm.start()
            a, peer = await self.machine(fm, "own")
            await self.session(peer, [0, 1, 2, 3])
            await peer.wait_sessions([0, 1, 2, 3])
            old01, env01 = self.started([0, 1])
            self.assertNotIn("SHARD_SESSIONS", env01)
            # Regroup: [0,1] stops, [1] restarts after it on this machine with
            # the agent's own session; only shard 0 left, so only it is stopped.
            mark = len(peer.packets)
            await peer.send(OP_CONNECT, {"shards": [1, 2, 3], "redundant": False})
            await peer.wait(OP_READY, where=lambda d: d["shards"] == [1, 2, 3], since=mark)
            _, _, stopped = await peer.wait(OP_STOPPED, since=mark)
            self.assertEqual(stopped, {"shards": [0]})
            self.assertFalse(alive(old01))
            pid1, env1 = self.started([1])
            own = self.shard_sessions(env1)
            self.assertEqual(list(own), ["1"])
            self.assertEqual(own["1"]["session_id"], self.gw.stats()["sessions"]["1"]["session_id"])
            a.wait_log(r"cluster \d+ started: pid %d, shards 1 \(1 to resume\)" % pid1, 5)
            st = self.check_discord()
            self.assertEqual((st["identify_count"], st["resumed_count"]), (4, 1))

            # A crash (SIGKILL, no final lines): the restart resumes the
            # sessions the agent last heard of.
            pid23, _ = self.started([2, 3])
            sids = {s: self.gw.stats()["sessions"][str(s)]["session_id"] for s in (2, 3)}
            os.kill(pid23, signal.SIGKILL)
            a.wait_log(r"cluster \d+ crashed", 10)
            line = a.wait_log(r"cluster \d+ started: pid \d+, shards 2,3 \(2 to resume\)", 10)
            pid = int(re.search(r"pid (\d+)", line).group(1))
            self.assertNotEqual(pid, pid23)
            deadline = time.monotonic() + 10
            while self.started([2, 3])[0] != pid:  # the script records itself
                self.assertLess(time.monotonic(), deadline)
                await asyncio.sleep(0.05)
            env = self.started([2, 3])[1]
            resume = self.shard_sessions(env)
            self.assertEqual({s: resume[str(s)]["session_id"] for s in (2, 3)}, sids)
            deadline = time.monotonic() + 15
            while self.gw.stats()["resumed_count"] < 3:
                self.assertLess(time.monotonic(), deadline, self.gw.stats()["resumes"])
                await asyncio.sleep(0.05)
            st = self.check_discord()
            self.assertEqual(st["identify_count"], 4)
            self.assertEqual(st["resumed_count"], 3)
            self.assertEqual(len(peer.ops(OP_STOPPED)), 1)
            await peer.close()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(15), 0, a.log())

        asyncio.run(go())

    def test_drain_sends_sessions_then_stopped_before_exit(self):
        async def go():
            fm = FakeMaster()
            await fm.start()
            a, peer = await self.machine(fm, "drain")
            await self.session(peer, [4, 5])
            await peer.wait_sessions([4, 5])
            pid, _ = self.started([4, 5])
            a.signal(signal.SIGTERM)
            await peer.wait(OP_OFFLOAD)
            self.assertTrue(alive(pid))  # nothing stops before MASTER answers
            mark = len(peer.packets)
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            i, _, stopped = await peer.wait(OP_STOPPED, since=mark)
            self.assertEqual(stopped, {"shards": [4, 5]})
            final = [o for _, o, _ in peer.packets[mark:i]]
            self.assertIn(OP_SESSIONS, final)  # the final SESSION lines moved seq
            self.assertEqual(sorted(peer.sessions(mark, i)), [4, 5])
            # The loop keeps serving the connection while the agent exits.
            status = await asyncio.get_running_loop().run_in_executor(None, a.wait, 15)
            self.assertEqual(status, 0, a.log())
            # Only heartbeats follow `stopped` before the agent closes.
            self.assertEqual({o for _, o, _ in peer.packets[i + 1:]} - {9}, set())
            self.assertTrue(peer.closed)
            self.assertFalse(alive(pid))
            self.assertEqual(self.open_sessions(), {})
            self.check_discord()
            await peer.close()
            await fm.stop()

        asyncio.run(go())

    def test_lease_timeout_stops_clusters(self):
        async def go():
            fm = FakeMaster()
            await fm.start()
            port = fm.port
            a, peer = await self.machine(fm, "lease", ("--lease-timeout", "1"))
            await self.session(peer, [6, 7])
            await peer.wait_sessions([6, 7])
            pid, _ = self.started([6, 7])
            # MASTER goes away for good: after the lease the clusters stop.
            await peer.close()
            await fm.stop()
            a.wait_log(r"no session with MASTER for 1s \(--lease-timeout\): stopping all 1 "
                       r"clusters", 10)
            a.wait_log(r"cluster \d+ stopped", 10)
            self.assertFalse(alive(pid))
            self.assertEqual(self.open_sessions(), {})
            gw = self.gw.stats()["sessions"]
            # MASTER is back: the agent runs nothing and reports the final sessions.
            fm = FakeMaster()
            await fm.start(port)
            peer = await self.accept(fm)
            _, _, info = await peer.wait(OP_INFO)
            self.assertEqual(info["shards"], [])
            await peer.send(OP_INITIALISE, initialise(8, token=TOKEN, gateway_url=self.gw.url))
            _, _, d = await peer.wait(OP_SESSIONS)
            got = {e["shard"]: e for e in d["sessions"]}
            self.assertEqual(sorted(got), [6, 7])
            for s in (6, 7):
                self.assertEqual(got[s]["session_id"], gw[str(s)]["session_id"])
            self.assertFalse(peer.ops(OP_STOPPED))  # not removed by a connect
            # MASTER gives them back with those sessions: resumed.
            handed = {str(s): {k: got[s][k] for k in ("session_id", "seq", "resume_url")}
                      for s in (6, 7)}
            await peer.send(OP_CONNECT, {"shards": [6, 7], "redundant": False,
                                         "sessions": handed})
            await peer.wait(OP_READY, where=lambda d: d["shards"] == [6, 7])
            self.assertEqual(self.shard_sessions(self.started([6, 7])[1]), handed)
            st = self.check_discord()
            self.assertEqual((st["identify_count"], st["resumed_count"]), (2, 2))
            self.assertEqual(a.count(r"--lease-timeout\): stopping"), 1)
            await peer.close()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(15), 0, a.log())

        asyncio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
