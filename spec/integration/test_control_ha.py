"""discluster-control with several MASTERs (high availability, issue 13):
the real agent against scripted MASTERs on loopback: python3-websockets
servers (control_harness.FakeMaster) and raw asyncio HTTP responders for a
follower's 503 refusal. The agent walks the list (the next MASTER at once),
follows a leader named by a 503 or a 4020 close when it is listed and never
otherwise, waits 200-500 ms between passes while followers answer (an
election) and backs off only after a pass nobody answered, refuses a stale
epoch with close 4021, and never restarts a cluster when the MASTER
changes. Every malformed refusal gets a clear log line and the walk goes on.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prom  # noqa: E402
from control_harness import (CONTROL_BIN, FakeMaster, Fleet, alive, free_port,  # noqa: E402
                             initialise)

OP_INFO, OP_INITIALISE, OP_CONNECT, OP_ACK, OP_READY, OP_GRANT = 0, 5, 6, 8, 10, 12


def ws(port, path=""):
    return "ws://127.0.0.1:%d%s" % (port, path)


def follower_answer(leader=None, extra=""):
    """MASTER's follower refusal as ha-spec.md writes it."""
    body = json.dumps({"role": "follower", "leader": leader, "epoch": 0}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nDiscluster-Role: follower\r\n" +
            ("Discluster-Leader: %s\r\n" % leader if leader is not None else "") + extra +
            "Retry-After: 1\r\nContent-Type: application/json\r\nConnection: close\r\n"
            "Content-Length: %d\r\n\r\n" % len(body))
    return head.encode() + body


PLAIN_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Responder:
    """A raw HTTP listener: answers each request head with `answer` (bytes,
    may be changed between connections) and closes; counts connections."""

    def __init__(self, answer):
        self.answer = answer
        self.hits = 0
        self.heads = []

    async def start(self, port=0):
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _conn(self, reader, writer):
        self.hits += 1
        try:
            self.heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def log(agent, pattern, timeout=10, start=0):
    """agent.wait_log without blocking the loop that serves the fake MASTERs."""
    return await asyncio.to_thread(agent.wait_log, pattern, timeout, start)


async def until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        await asyncio.sleep(0.02)


async def scrape(agent):
    line = await log(agent, r"metrics on http")
    port = int(re.search(r"127\.0\.0\.1:(\d+)/metrics", line).group(1))
    return await asyncio.to_thread(prom.scrape, port)


async def session(fm, shards, shard_count=4, timeout=10, **epochs):
    """Accepts the agent at fm, initialises it and connects shards; waits for
    ready. epochs: init=N, connect=N add d.epoch to those packets."""
    peer = await fm.accept(timeout)
    await peer.recv(OP_INFO)
    d = initialise(shard_count)
    if "init" in epochs:
        d["epoch"] = epochs["init"]
    await peer.send(OP_INITIALISE, d)
    c = {"shards": shards, "redundant": False}
    if "connect" in epochs:
        c["epoch"] = epochs["connect"]
    await peer.send(OP_CONNECT, c)
    await peer.recv(OP_READY)
    return peer


def waits(agent, start=0):
    """The waits the agent logged after failed attempts, in seconds."""
    lines = agent.log().split("\n")[start:]
    return [float(x) for x in re.findall(r"no session with MASTER .*? in ([\d.]+)s$",
                                         "\n".join(lines), re.M)]


class ControlHA(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()

    def tearDown(self):
        self.fleet.close()

    def run_async(self, coro):
        asyncio.run(asyncio.wait_for(coro, 60))

    def test_walks_past_a_dead_master_and_backs_off_after_a_full_pass(self):
        f = self.fleet

        async def go():
            dead, dead2 = free_port(), free_port()
            fm = FakeMaster()
            await fm.start()
            t0 = time.monotonic()
            a = f.agent(0, "walker", "--retry", "30", url=[ws(dead), ws(fm.port)])
            peer = await session(fm, [0, 1])
            self.assertLess(time.monotonic() - t0, 5, a.log())
            await log(a, r"no session with MASTER ws://127\.0\.0\.1:%d/ \(connect to "
                      r"127\.0\.0\.1:%d: connection refused\); trying ws://127\.0\.0\.1:%d/ "
                      r"in 0s$" % (dead, dead, fm.port))
            await log(a, r"connected to MASTER at 127\.0\.0\.1:%d" % fm.port)
            a.kill()
            # Nobody answers: the next MASTER at once, the backoff only after
            # the whole list failed.
            b = f.agent(0, "pass", "--retry", "30", url=[ws(dead), ws(dead2)])
            line = await log(b, r"every MASTER tried; trying ws://127\.0\.0\.1:%d/ in" % dead)
            wait = float(re.search(r" in ([\d.]+)s$", line).group(1))
            self.assertTrue(0.5 <= wait <= 1.0, line)
            self.assertIn("no session with MASTER ws://127.0.0.1:%d/ (connect to 127.0.0.1:%d: "
                          "connection refused); trying ws://127.0.0.1:%d/ in 0s"
                          % (dead, dead, dead2), b.log())
            await log(b, r"every MASTER tried; trying .* in ([1-2](\.\d+)?)s$", 5)
            b.signal(signal.SIGTERM)  # no session: it stops at once, cleanly
            self.assertEqual(await asyncio.to_thread(b.wait, 10), 0, b.log())
            peer.release()
            await fm.stop()

        self.run_async(go())

    def test_follower_refusal_sends_it_to_the_named_leader_at_once(self):
        f = self.fleet

        async def go():
            leader = FakeMaster()
            await leader.start()
            skipped = await Responder(PLAIN_500).start()
            # the leader URL as MASTER advertises it: no path (the same as "/")
            follower = await Responder(follower_answer(ws(leader.port))).start()
            t0 = time.monotonic()
            a = f.agent(0, "redirected", "--retry", "30",
                        url=[ws(follower.port), ws(skipped.port), ws(leader.port, "/")])
            peer = await leader.accept(timeout=10)
            self.assertLess(time.monotonic() - t0, 5, a.log())  # --retry is 30
            await peer.recv(OP_INFO)
            self.assertEqual(follower.hits, 1)
            self.assertEqual(skipped.hits, 0)  # the walk did not go through it
            line = await log(a, r"no session with MASTER ws://127\.0\.0\.1:%d/" % follower.port)
            self.assertIn("MASTER at 127.0.0.1:%d is a follower (HTTP 503); the leader is %s); "
                          "trying ws://127.0.0.1:%d/ in 0s" % (follower.port, ws(leader.port),
                                                             leader.port), line)
            # the refusal answered an upgrade request like any other
            self.assertIn(b"Upgrade: websocket", follower.heads[0])
            await peer.send(OP_INITIALISE, initialise(4))
            await log(a, r"initialised")
            peer.release()
            await leader.stop()
            await follower.stop()
            await skipped.stop()

        self.run_async(go())

    def test_election_waits_instead_of_backing_off_and_unlisted_leaders(self):
        f = self.fleet

        async def go():
            outsider = await Responder(PLAIN_500).start()
            f1 = await Responder(follower_answer(None)).start()
            f2 = await Responder(follower_answer(ws(outsider.port))).start()
            a = f.agent(0, "elector", "--retry", "30", url=[ws(f1.port), ws(f2.port)])
            # Six passes: the backoff (0.5-1 s, then doubling) would need 15 s.
            t0 = time.monotonic()
            await until(lambda: f1.hits >= 6 and f2.hits >= 6, 8, "six passes")
            self.assertLess(time.monotonic() - t0, 6, a.log())
            self.assertEqual(outsider.hits, 0)  # never followed
            self.assertEqual(a.count(r"a follower names %s as the leader, which is not one of "
                                     r"this agent's MASTERs" % re.escape(ws(outsider.port))), 1)
            self.assertIn("MASTER at 127.0.0.1:%d is a follower (HTTP 503) and knows no leader "
                          "yet" % f1.port, a.log())
            self.assertNotIn("every MASTER tried", a.log())
            w = waits(a)
            self.assertGreaterEqual(len(w), 10, w)
            for x, y in zip(w[0::2], w[1::2]):
                self.assertEqual(x, 0)  # f1 -> f2 at once
                self.assertTrue(0.2 <= y <= 0.5, w)  # then the election wait
            self.assertRegex(a.log(), r"an election is under way; trying ws://127\.0\.0\.1:%d/ "
                                      r"in 0\.\d+s" % f1.port)
            # The election ends: f2's place becomes the leader, f1 names it.
            await f2.stop()
            leader = FakeMaster()
            await leader.start(f2.port)
            f1.answer = follower_answer(ws(f2.port))
            peer = await session(leader, [0])
            self.assertEqual(outsider.hits, 0)
            a.signal(signal.SIGTERM)  # drains: offload, then MASTER never answers
            await log(a, r"SIGTERM: offloading 1 shards")
            a.signal(signal.SIGTERM)  # a second signal stops at once
            self.assertEqual(await asyncio.to_thread(a.wait, 10), 0, a.log())
            peer.release()
            await leader.stop()
            await f1.stop()
            await outsider.stop()

        self.run_async(go())

    def test_close_4020_moves_to_the_leader_and_keeps_the_clusters(self):
        f = self.fleet

        async def go():
            a_m, b_m = FakeMaster(), FakeMaster()
            await a_m.start()
            await b_m.start()
            skipped = await Responder(PLAIN_500).start()
            ag = f.agent(0, "mover", "--retry", "30", "--shards-per-cluster", "2",
                         "--metrics-port", "0", "--lease-timeout", "20",
                         url=[ws(a_m.port), ws(skipped.port), ws(b_m.port)])
            pa = await session(a_m, [0, 1, 2, 3])
            await log(ag, r"ready: all 4")
            before = f.starts()
            self.assertEqual(len(before), 2)
            fams = await scrape(ag)
            self.assertEqual(prom.value(fams, "discluster_control_master", index="0",
                                        url=ws(a_m.port, "/")), 1)
            self.assertEqual(prom.value(fams, "discluster_control_master", index="2",
                                        url=ws(b_m.port, "/")), 0)
            self.assertEqual(prom.value(fams, "discluster_control_master_switches_total"), 0)
            mark = ag.mark()
            # A steps down and names B (as advertised, without a path).
            await pa.ws.close(code=4020, reason=ws(b_m.port))
            t0 = time.monotonic()
            pb = await b_m.accept(timeout=10)
            self.assertLess(time.monotonic() - t0, 5, ag.log())
            hello = await pb.recv(OP_INFO)
            self.assertEqual(hello["d"]["shards"], [0, 1, 2, 3])  # still running
            line = await log(ag, r"lost MASTER ws://127\.0\.0\.1:%d/" % a_m.port, 5, mark)
            self.assertIn("MASTER at 127.0.0.1:%d stepped down (close 4020); the leader is %s); "
                          "clusters keep running for up to 20s (--lease-timeout)"
                          % (a_m.port, ws(b_m.port)), line)
            self.assertTrue(line.endswith("trying ws://127.0.0.1:%d/ in 0s" % b_m.port), line)
            await pb.send(OP_INITIALISE, initialise(4))
            await pb.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await pb.recv(OP_READY)
            line = await log(ag, r"connect: 4 shards \[0,1,2,3\]", 5, mark)
            self.assertIn("2 clusters kept, 0 started, 0 stopped", line)
            await log(ag, r"MASTER changed: now 127\.0\.0\.1:%d \(was 127\.0\.0\.1:%d\); "
                      r"clusters keep running" % (b_m.port, a_m.port), 5, mark)
            self.assertEqual(f.starts(), before)  # nothing restarted
            for pid, _ in before:
                self.assertTrue(alive(pid))
            self.assertEqual(skipped.hits, 0)
            fams = await scrape(ag)
            self.assertEqual(prom.value(fams, "discluster_control_master_switches_total"), 1)
            self.assertEqual(prom.value(fams, "discluster_control_master", index="0",
                                        url=ws(a_m.port, "/")), 0)
            self.assertEqual(prom.value(fams, "discluster_control_master", index="2",
                                        url=ws(b_m.port, "/")), 1)
            self.assertEqual(prom.value(fams, "discluster_control_cluster_restarts_total"), 0)
            self.assertEqual(prom.value(fams, "discluster_control_clusters", state="ready"), 2)
            self.assertEqual(prom.value(fams, "discluster_control_connected"), 1)
            self.assertEqual(prom.value(fams, "discluster_control_master_epoch"), 0)
            # 4020 without a leader: the next MASTER (A again, B's next) at once.
            mark = ag.mark()
            await pb.ws.close(code=4020, reason="")
            pa2 = await a_m.accept(timeout=10)
            line = await log(ag, r"lost MASTER ws://127\.0\.0\.1:%d/" % b_m.port, 5, mark)
            self.assertIn("stepped down (close 4020), no leader named", line)
            await pa2.recv(OP_INFO)
            self.assertEqual(f.starts(), before)
            for p in (pa, pb, pa2):
                p.release()
            await a_m.stop()
            await b_m.stop()
            await skipped.stop()

        self.run_async(go())

    def test_stale_epochs_are_refused_with_4021(self):
        f = self.fleet

        async def go():
            a_m, b_m = FakeMaster(), FakeMaster()
            await a_m.start()
            await b_m.start()
            ag = f.agent(0, "fenced", "--retry", "30", "--metrics-port", "0",
                         url=[ws(a_m.port), ws(b_m.port)])
            # A: initialise at epoch 7, then a connect from an older term.
            pa = await a_m.accept()
            await pa.recv(OP_INFO)
            await pa.send(OP_INITIALISE, dict(initialise(4), epoch=7))
            await log(ag, r"initialised")
            await pa.send(OP_CONNECT, {"shards": [0, 1], "redundant": False, "epoch": 6})
            await asyncio.wait_for(pa.ws.wait_closed(), 10)
            self.assertEqual(pa.ws.close_code, 4021)
            self.assertEqual(pa.ws.close_reason, "stale epoch")
            line = await log(ag, r"connect from MASTER at 127\.0\.0\.1:%d carries epoch 6, "
                             r"below epoch 7 seen before" % a_m.port)
            self.assertIn("ignored; closing with 4021", line)
            self.assertFalse([p for p in pa.seen if p["o"] == OP_ACK])  # not even acked
            self.assertEqual(f.starts(), [])  # and nothing started
            self.assertEqual(ag.count(r"carries epoch"), 1)
            # B, the next MASTER at once: an equal epoch, then a higher one.
            pb = await session(b_m, [0, 1], init=7, connect=8)
            await log(ag, r"ready: all 2")
            self.assertEqual(len(f.starts()), 1)
            fams = await scrape(ag)
            self.assertEqual(prom.value(fams, "discluster_control_master_epoch"), 8)
            # A grant from an older term than the last connect: refused too.
            mark = ag.mark()
            await pb.send(OP_GRANT, {"shard": 0, "epoch": 7})
            await asyncio.wait_for(pb.ws.wait_closed(), 10)
            self.assertEqual(pb.ws.close_code, 4021)
            await log(ag, r"grant from MASTER at 127\.0\.0\.1:%d carries epoch 7, below epoch 8"
                      % b_m.port, 5, mark)
            # A (next at once) comes back with an initialise of an old term: refused.
            pa2 = await a_m.accept()
            await pa2.recv(OP_INFO)
            await pa2.send(OP_INITIALISE, dict(initialise(4), epoch=5))
            await asyncio.wait_for(pa2.ws.wait_closed(), 10)
            self.assertEqual(pa2.ws.close_code, 4021)
            await log(ag, r"initialise from MASTER at 127\.0\.0\.1:%d carries epoch 5, below "
                      r"epoch 8" % a_m.port, 5, mark)
            # Both tried: the backoff; then B without etcd sends no epoch: accepted,
            # and the clusters stayed all along.
            await log(ag, r"every MASTER tried; trying ws://127\.0\.0\.1:%d/" % b_m.port, 5, mark)
            pb2 = await session(b_m, [0, 1])
            line = await log(ag, r"connect: 2 shards", 5, mark)
            self.assertIn("1 clusters kept, 0 started, 0 stopped", line)
            self.assertEqual(len(f.starts()), 1)
            fams = await scrape(ag)
            self.assertEqual(prom.value(fams, "discluster_control_master_epoch"), 8)
            # A malformed epoch is a malformed packet: ignored, the session stays.
            await pb2.send(OP_CONNECT, {"shards": [0, 1], "redundant": False, "epoch": "9"})
            await log(ag, r"ignoring a bad packet from MASTER: connect: d\.epoch must be an "
                      r"integer from 0 to 2\^53", 5, mark)
            await pb2.send(OP_CONNECT, {"shards": [0, 1], "redundant": False, "epoch": 9})
            await pb2.recv(OP_ACK, where=lambda d: d["o"] == OP_CONNECT)
            self.assertEqual(pb2.ws.close_code, None)
            self.assertEqual(ag.count(r"carries epoch"), 3)
            for p in (pa, pb, pa2, pb2):
                p.release()
            await a_m.stop()
            await b_m.stop()

        self.run_async(go())

    def test_malformed_refusals_are_logged_and_walked_past(self):
        f = self.fleet

        async def go():
            bad = [
                (follower_answer("not-a-url"), r"is a follower \(HTTP 503\); ignoring its "
                 r"malformed Discluster-Leader header \(must start with wss:// or ws://\)"),
                (follower_answer("ws://127.0.0.1:1", "X-Pad: %s\r\n" % ("a" * 9000)),
                 r"MASTER's response head is longer than 8192 bytes"),
                (b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                 r"MASTER refused the upgrade: HTTP 503 \(no Discluster-Role: follower, so not "
                 r"a follower's refusal\)"),
                (follower_answer("ws://127.0.0.1:1", "Discluster-Leader: ws://127.0.0.1:2\r\n"),
                 r"ignoring its 2 Discluster-Leader headers \(one expected\)"),
                (follower_answer("ws://127.0.0.1:1/" + "a" * 700),
                 r"malformed Discluster-Leader header \(longer than 600 bytes\)"),
                (follower_answer("ws://127.0.0.1:99999"),
                 r"malformed Discluster-Leader header \(bad port\)"),
                (b"HTTP/1.1 503 Service Unavailable\r\nDiscluster-Role: follower\r\nDiscluster-"
                 b"Leader: ws://127.0.0.1:1\x01\r\n\r\n",
                 r"bad HTTP response from MASTER: HPE_INVALID_HEADER_TOKEN"),
                (b"HTTP/1.1 503 Service Unavailable\r\nDiscluster-Role: follower\r\nDiscluster-"
                 b"Leader: ws://caf\xc3\xa9.example\r\nContent-Length: 0\r\n\r\n",
                 r"malformed Discluster-Leader header \(holds a blank, control or non-ASCII "
                 r"character\)"),
            ]
            rs = [await Responder(answer).start() for answer, _ in bad]
            good = FakeMaster()
            await good.start()
            ag = f.agent(0, "robust", "--retry", "30",
                         url=[ws(r.port) for r in rs] + [ws(good.port)])
            peer = await good.accept(timeout=10)  # one pass, at once
            await peer.recv(OP_INFO)
            for r, (_, pattern) in zip(rs, bad):
                self.assertEqual(r.hits, 1)
                line = await log(ag, r"no session with MASTER ws://127\.0\.0\.1:%d/" % r.port)
                self.assertRegex(line, pattern)
            self.assertNotIn("not one of this agent's MASTERs", ag.log())
            # A 4020 whose reason is not a URL: logged, the walk goes on.
            await peer.send(OP_INITIALISE, initialise(2))
            await log(ag, r"initialised")
            mark = ag.mark()
            await peer.ws.close(code=4020, reason="the moon")
            line = await log(ag, r"lost MASTER", 5, mark)
            self.assertIn("stepped down (close 4020); its close reason is not a leader URL "
                          "(holds a blank, control or non-ASCII character)", line)
            await until(lambda: rs[0].hits == 2, 5, "the walk going on")
            peer2 = await good.accept(timeout=10)
            await peer2.recv(OP_INFO)
            ag.signal(signal.SIGTERM)  # no shards: it stops at once, cleanly
            self.assertEqual(await asyncio.to_thread(ag.wait, 10), 0, ag.log())
            peer.release()
            peer2.release()
            await good.stop()
            for r in rs:
                await r.stop()

        self.run_async(go())

    def test_master_list_from_the_environment_and_bad_lists(self):
        f = self.fleet

        async def go():
            dead = free_port()
            fm = FakeMaster()
            await fm.start()
            a = f.agent(0, "env", url=[], env={
                "DISCLUSTER_MASTER": " %s , %s " % (ws(dead), ws(fm.port))})
            peer = await fm.accept(timeout=10)
            await peer.recv(OP_INFO)
            await log(a, r"MASTERs ws://127\.0\.0\.1:%d/, ws://127\.0\.0\.1:%d/, "
                      % (dead, fm.port))
            self.assertIn("no session with MASTER ws://127.0.0.1:%d/" % dead, a.log())
            # --master wins over DISCLUSTER_MASTER, which is then not read at all.
            b = f.agent(0, "flag", url=[ws(fm.port)], env={"DISCLUSTER_MASTER": "nonsense"})
            peer2 = await fm.accept(timeout=10)
            await peer2.recv(OP_INFO)
            await log(b, r"MASTER ws://127\.0\.0\.1:%d/, " % fm.port)
            peer.release()
            peer2.release()
            await fm.stop()

        self.run_async(go())

        def run(args, master_env=None):
            env = {k: v for k, v in os.environ.items() if k != "DISCLUSTER_MASTER"}
            if master_env is not None:
                env["DISCLUSTER_MASTER"] = master_env
            p = subprocess.run([CONTROL_BIN, "--cluster-command", "true"] + args, env=env,
                               capture_output=True, text=True, timeout=20)
            return p.returncode, p.stderr

        many = [ws(9000 + i) for i in range(17)]
        rc, err = run([x for u in many for x in ("--master", u)])
        self.assertEqual(rc, 2)
        self.assertIn("--master: more than 16 MASTER URLs", err)
        rc, err = run([], ",".join(many))
        self.assertEqual(rc, 2)
        self.assertIn("DISCLUSTER_MASTER: more than 16 MASTER URLs", err)
        rc, err = run(["--master", ws(9000), "--master", ws(9000, "/")])
        self.assertEqual((rc, err.strip()), (2, "discluster-control: --master ws://127.0.0.1:"
                                                 "9000/: the same MASTER is listed twice"))
        rc, err = run([], "%s,,%s" % (ws(9000), ws(9001)))
        self.assertEqual((rc, err.strip()), (2, "discluster-control: DISCLUSTER_MASTER: an "
                                                 "empty MASTER URL"))
        rc, err = run([], "%s, http://127.0.0.1:9001" % ws(9000))
        self.assertEqual((rc, err.strip()), (2, "discluster-control: DISCLUSTER_MASTER "
                                                 "http://127.0.0.1:9001: must start with wss:// "
                                                 "or ws://"))
        rc, err = run(["--master", "%s,%s" % (ws(9000), ws(9001))])
        self.assertEqual(rc, 2)
        self.assertIn("bad port (one URL per --master: repeat the flag; DISCLUSTER_MASTER takes "
                      "a comma-separated list)", err)
        rc, err = run(["--master", "ws://127.0.0.1:9000/a b"])
        self.assertEqual(rc, 2)
        self.assertIn("holds a blank, control or non-ASCII character", err)
        rc, err = run(["--master", ws(9000), "--ca-file", "/nonexistent"])
        self.assertEqual(rc, 2)
        self.assertIn("only used with a wss:// --master", err)
        p = subprocess.run([CONTROL_BIN, "--help"], capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0)
        help_text = p.stdout
        self.assertIn("Repeat it (up to 16)", help_text)
        self.assertIn("DISCLUSTER_MASTER\n", help_text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
