"""The fake Discord gateway (spec/fake_gateway.py) and the reference cluster
(scripts/discluster-cluster), both run as real processes on loopback.

The fake is checked with independent clients (urllib, python3-websockets);
the cluster runs against the fake with a tiny identify-queue stub written
here (an http.server thread), as discluster-control would provide it.
"""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("DCM_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
FAKE = os.path.join(SRC, "spec", "fake_gateway.py")
CLUSTER = os.path.join(SRC, "scripts", "discluster-cluster")
PY = "/usr/bin/python3"
TOKEN = "fake.gateway.TOKEN-for-tests-only"


class Lines:
    """Collects a pipe's lines on a thread; wait() for a pattern."""

    def __init__(self, pipe):
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe):
        for line in pipe:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # EOF
            self.cond.notify_all()

    def text(self):
        with self.cond:
            return "\n".join(x for x in self.lines if x is not None)

    def matching(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return [x for x in self.lines if x is not None and rx.search(x)]

    def wait(self, pattern, timeout=15, count=1):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [x for x in self.lines if x is not None and rx.search(x)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] is None):
                    raise AssertionError("no line matching %r within %ss:\n%s"
                                         % (pattern, timeout, self.text()))
                self.cond.wait(min(left, 0.1))


class Gateway:
    """spec/fake_gateway.py as a process."""

    def __init__(self, *args, token=TOKEN):
        self.proc = subprocess.Popen([PY, FAKE, "--port", "0", "--token", token, "--verbose"]
                                     + list(args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)
        self.port = int(self.out.wait(r"^PORT \d+$", 10).split()[1])
        self.url = "ws://127.0.0.1:%d" % self.port

    def http(self, method, path, body=None, headers=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=body,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stats(self):
        code, st = self.http("GET", "/_stats")
        assert code == 200, (code, st)
        return st

    def settled(self, pred=lambda st: not st["open"], timeout=5):
        """Stats once pred holds (the fake sees a close a moment after the
        client); the last stats after timeout, for the assertions to show."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if pred(st) or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def config(self, **kw):
        code, body = self.http("POST", "/_config", json.dumps(kw).encode())
        assert code == 200, (code, body)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("fake gateway ignored SIGTERM:\n" + self.err.text())
            assert rc == 0, "fake gateway exited %s:\n%s" % (rc, self.err.text())
        close_pipes(self)
        assert "Traceback" not in self.err.text(), self.err.text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Queue:
    """An identify-queue stub: GET ?shard=N answers 200 when granted.
    interval None grants at once; else grants of one bucket are that far apart."""

    def __init__(self, interval=None, max_concurrency=1, status=200):
        self.interval, self.mc, self.status = interval, max_concurrency, status
        self.requests = []
        self.lock = threading.Lock()
        self.buckets = {}
        queue = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                queue._answer(self)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/q-%d" % (self.server.server_address[1], os.getpid())

    def _answer(self, h):
        m = re.match(r"^/q-\d+\?shard=(\d+)$", h.path)
        status = self.status if m else 400
        if m and status == 200:
            shard = int(m.group(1))
            with self.lock:
                self.requests.append((shard, time.monotonic()))
                lock = self.buckets.setdefault(shard % self.mc, [threading.Lock(), None])
            if self.interval is not None:
                with lock[0]:
                    if lock[1] is not None:
                        time.sleep(max(0.0, lock[1] + self.interval - time.monotonic()))
                    lock[1] = time.monotonic()
        body = json.dumps({"shard": int(m.group(1))} if m else {}).encode()
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)

    def count(self):
        with self.lock:
            return len(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Cluster:
    """scripts/discluster-cluster as a process, stdin a pipe like under the agent."""

    def __init__(self, gw, shards, count, queue=None, token=TOKEN, sessions=None, mc=1,
                 extra_env=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARD_", "DISC"))}
        env.update(SHARD_IDS=",".join(str(s) for s in shards), SHARD_COUNT=str(count),
                   DISCORD_TOKEN=token, DISCORD_GATEWAY_URL=gw.url, MAX_CONCURRENCY=str(mc),
                   CLUSTER_ID="0")
        if queue is not None:
            env["DISCLUSTER_IDENTIFY_URL"] = queue.url
        if sessions is not None:
            env["SHARD_SESSIONS"] = json.dumps(sessions)
        env.update(extra_env or {})
        self.token = token
        self.proc = subprocess.Popen([PY, CLUSTER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True)
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def wait(self, timeout=20):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("cluster did not exit:\n%s\n%s"
                                 % (self.out.text(), self.err.text()))
        self.out.thread.join(5)
        self.err.thread.join(5)
        for text in (self.out.text(), self.err.text()):
            assert self.token not in text, "the token leaked:\n" + text
        assert "Traceback" not in self.err.text(), self.err.text()
        return rc

    def sessions(self):
        """{shard: {session_id, seq, resume_url}} from its last SESSION lines."""
        out = {}
        for line in self.out.matching(r"^SESSION "):
            _, shard, sid, seq, url = line.split()
            out[shard] = {"session_id": sid, "seq": int(seq), "resume_url": url}
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdin.close()
        close_pipes(self)


def close_pipes(p):
    """After exit: the readers reach EOF, then their pipes are closed."""
    for lines, pipe in ((p.out, p.proc.stdout), (p.err, p.proc.stderr)):
        lines.thread.join(5)
        pipe.close()


def outcomes(entries):
    return sorted(e["outcome"] for e in entries)


class FakeGatewayTest(unittest.TestCase):

    def setUp(self):
        self.cleanup = []

    def tearDown(self):
        for c in reversed(self.cleanup):
            c()

    def gateway(self, *args, **kw):
        gw = Gateway(*args, **kw)
        self.cleanup.append(gw.close)
        return gw

    def queue(self, *args, **kw):
        q = Queue(*args, **kw)
        self.cleanup.append(q.close)
        return q

    def cluster(self, *args, **kw):
        c = Cluster(*args, **kw)
        self.cleanup.append(c.kill)
        return c

    def test_rest_gateway_bot_and_control_endpoints(self):
        gw = self.gateway("--shards", "6", "--max-concurrency", "2", "--total", "1000",
                          "--remaining", "900", "--reset-after", "5000")
        auth = {"Authorization": "Bot " + TOKEN}
        code, body = gw.http("GET", "/api/v10/gateway/bot", headers=auth)
        self.assertEqual(code, 200)
        self.assertEqual(body["url"], gw.url)
        self.assertEqual(body["shards"], 6)
        lim = body["session_start_limit"]
        self.assertEqual((lim["total"], lim["remaining"], lim["max_concurrency"]),
                         (1000, 900, 2))
        self.assertTrue(0 < lim["reset_after"] <= 5000, lim)
        self.assertEqual(gw.http("GET", "/gateway/bot", headers=auth)[0], 200)
        for bad in ({}, {"Authorization": TOKEN}, {"Authorization": "Bearer " + TOKEN},
                    {"Authorization": "Bot wrong"}):
            code, body = gw.http("GET", "/api/v10/gateway/bot", headers=bad)
            self.assertEqual(code, 401, bad)
            self.assertIn("message", body)
        self.assertEqual(gw.http("GET", "/nope")[0], 404)
        auth2 = "Authorization: Bot %s\r\n" % TOKEN
        for raw, status in (("GET /gateway/bot HTTP/1.1\r\n" + auth2 * 2 + "\r\n", b" 401 "),
                            ("GET /gateway/bot HTTP/1.0\r\n\r\n", b" 400 "),
                            ("garbage\r\n\r\n", b" 400 ")):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                sock.sendall(raw.encode())
                self.assertIn(status, sock.recv(4096).split(b"\r\n")[0], raw)
        self.assertEqual(gw.http("PUT", "/_config", b"{}")[0], 405)
        for body in (b"not json", b"[]", b'{"refuse_resume": 1}', b'{"bogus": true}',
                     b'{"fatal_shards": {"x": 4011}}', b'{"disallowed_intents": -1}',
                     b'{"token": ""}', b'{"fatal_shards": {"0": 99}}'):
            self.assertEqual(gw.http("POST", "/_config", body)[0], 400, body)
        # A new token applies to REST at once; the fake kept serving through the errors.
        gw.config(token="other")
        self.assertEqual(gw.http("GET", "/gateway/bot", headers=auth)[0], 401)
        self.assertEqual(gw.http("GET", "/gateway/bot",
                                 headers={"Authorization": "Bot other"})[0], 200)
        st = gw.stats()
        self.assertEqual((st["identify_count"], st["remaining"]), (0, 900))

    def test_raw_client_rate_limit_bad_input_takeover(self):
        gw = self.gateway("--shards", "4", "--max-concurrency", "2",
                          "--identify-interval", "5", "--dispatch-interval", "0.1")

        async def conn(path="/?v=10&encoding=json"):
            ws = await websockets.connect(gw.url + path, open_timeout=5, close_timeout=3,
                                          ping_interval=None)
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(hello["op"], 10)
            self.assertEqual(hello["d"]["heartbeat_interval"], 41250)
            return ws

        async def send(ws, op, d):
            await ws.send(json.dumps({"op": op, "d": d}))

        async def recv(ws, skip_events=True):
            while True:
                p = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if not (skip_events and p["t"] == "MESSAGE_CREATE"):
                    return p

        def ident(shard, token=TOKEN, intents=513):
            return {"token": token, "intents": intents, "shard": shard,
                    "properties": {"os": "linux", "browser": "t", "device": "t"}}

        async def closed(ws):
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed:
                pass
            return ws.close_code

        async def go():
            a = await conn()
            await send(a, 1, None)
            self.assertEqual((await recv(a))["op"], 11)
            await send(a, 2, ident([0, 4]))
            ready = await recv(a)
            self.assertEqual((ready["op"], ready["t"], ready["s"]), (0, "READY", 1))
            self.assertEqual(ready["d"]["shard"], [0, 4])
            self.assertEqual(ready["d"]["resume_gateway_url"], gw.url + "/resume")
            sid = ready["d"]["session_id"]
            # Shard 2 is in shard 0's bucket: too soon. The connection stays open.
            b = await conn()
            await send(b, 2, ident([2, 4]))
            self.assertEqual(await recv(b), {"op": 9, "d": False, "s": None, "t": None})
            await send(b, 1, 5)
            self.assertEqual((await recv(b))["op"], 11)
            # Bucket 1 is free.
            c = await conn()
            await send(c, 2, ident([1, 4]))
            self.assertEqual((await recv(c))["t"], "READY")
            # Events flow with increasing s.
            seqs = [(await recv(a, False))["s"] for _ in range(3)]
            self.assertEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2])
            # Resume on another connection takes the session over (4009), replays after seq.
            d = await conn("/resume/?v=10&encoding=json")
            await send(d, 6, {"token": TOKEN, "session_id": sid, "seq": 2})
            self.assertEqual(await closed(a), 4009)
            got = []
            while True:
                p = await recv(d, False)
                got.append(p["s"])
                if p["t"] == "RESUMED":
                    break
            self.assertEqual(got, list(range(3, got[-1] + 1)))
            # Unknown session, then a session its client ended (1000): INVALID_SESSION.
            e = await conn()
            await send(e, 6, {"token": TOKEN, "session_id": "nope", "seq": 1})
            self.assertEqual((await recv(e))["op"], 9)
            await d.close(1000)
            await asyncio.sleep(0.2)
            await send(e, 6, {"token": TOKEN, "session_id": sid, "seq": 1})
            self.assertEqual((await recv(e))["op"], 9)
            # Bad input closes with Discord's codes.
            for payload, code in (("not json", 4002), ('{"op": 42, "d": {}}', 4001),
                                  ("[1]", 4002), ('{"op": "2"}', 4002), (b"\x00", 4002),
                                  (" " * ((1 << 20) + 1), 1009),
                                  (json.dumps({"op": 2, "d": ident([0, 4], "bad")}), 4004),
                                  (json.dumps({"op": 2, "d": ident(None)}), 4010),
                                  (json.dumps({"op": 2, "d": ident([4, 4])}), 4010),
                                  (json.dumps({"op": 2, "d": ident([-1, 4])}), 4010),
                                  (json.dumps({"op": 2, "d": ident([0, 8])}), 4010),
                                  (json.dumps({"op": 2, "d": ident([3, 4], intents="x")}),
                                   4013),
                                  (json.dumps({"op": 6, "d": {"token": "bad"}}), 4004)):
                w = await conn()
                await w.send(payload)
                self.assertEqual(await closed(w), code, payload)
            await send(c, 2, ident([1, 4]))  # already identified
            self.assertEqual(await closed(c), 4005)
            for w in (b, e):
                await w.close(4000)

        asyncio.run(asyncio.wait_for(go(), 40))
        st = gw.settled(lambda st: not st["open"] and sum(st["closes"].values()) == 18)
        self.assertEqual(st["invalid_sessions"], 1)
        self.assertEqual(st["identify_count"], 3 + 7)
        self.assertEqual(st["remaining"], 1000 - 10)
        self.assertEqual(outcomes(st["identifies"][:3]), ["invalid_session", "ready", "ready"])
        self.assertEqual([i["bucket"] for i in st["identifies"][:3]], [0, 0, 1])
        self.assertEqual(st["resumed_count"], 1)
        self.assertEqual(outcomes(st["resumes"]),
                         ["closed:4004", "invalid_session", "invalid_session", "resumed"])
        self.assertEqual(st["max_open_per_shard"], 1)
        self.assertEqual(st["double_sessions"], [])
        self.assertEqual(st["open"], {})
        for code in ("4009", "4002", "4001", "4004", "4010", "4013", "4005", "1000", "1009"):
            self.assertIn(code, st["closes"])
        self.assertFalse(st["sessions"]["0"]["open"])
        self.assertIn("0", st["resumed_t"])

    def test_in_process_use(self):
        sys.path.insert(0, os.path.join(SRC, "spec"))
        from fake_gateway import FakeGateway
        with FakeGateway(TOKEN, shards=2, max_concurrency=2) as gw:
            req = urllib.request.Request(gw.api_base + "/gateway/bot",
                                         headers={"Authorization": "Bot " + TOKEN})
            with urllib.request.urlopen(req, timeout=5) as r:
                self.assertEqual(json.loads(r.read())["url"], gw.url)
            gw.configure(refuse_resume=True, fatal_shards={"1": 4011})
            self.assertTrue(gw.refuse_resume)
            with self.assertRaises(ValueError):
                gw.configure(refuse_resume="yes")
            st = gw.stats()
            self.assertEqual((st["identify_count"], st["remaining"], st["open"]), (0, 1000, {}))
            port = gw.port
        with self.assertRaises(OSError):
            urllib.request.urlopen("http://127.0.0.1:%d/_stats" % port, timeout=2)

    def test_double_session_is_recorded(self):
        gw = self.gateway("--shards", "1", "--identify-interval", "0",
                          "--dispatch-interval", "0")

        async def go():
            socks = []
            for _ in range(2):
                ws = await websockets.connect(gw.url, ping_interval=None, close_timeout=3)
                await ws.recv()
                await ws.send(json.dumps({"op": 2, "d": {"token": TOKEN, "intents": 1,
                                                         "shard": [0, 1], "properties": {}}}))
                self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5))["t"],
                                 "READY")
                socks.append(ws)
            st = gw.stats()
            self.assertEqual(st["open"], {"0": 2})
            self.assertEqual(st["max_open_per_shard"], 2)
            self.assertEqual([d["shard"] for d in st["double_sessions"]], [0])
            for ws in socks:
                await ws.close(4000)

        asyncio.run(asyncio.wait_for(go(), 20))
        self.assertEqual(gw.settled()["open"], {})

    def test_ready_delay_keeps_answering_heartbeats(self):
        gw = self.gateway("--shards", "2", "--identify-interval", "0",
                          "--ready-delay", "0.5", "--dispatch-interval", "0")
        ident = {"op": 2, "d": {"token": TOKEN, "intents": 1, "shard": [0, 2],
                                "properties": {}}}

        async def go():
            ws = await websockets.connect(gw.url, ping_interval=None, close_timeout=3)
            await ws.recv()
            t0 = time.monotonic()
            await ws.send(json.dumps(ident))
            await ws.send(json.dumps({"op": 1, "d": None}))
            self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5))["op"], 11)
            ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(ready["t"], "READY")
            self.assertGreaterEqual(time.monotonic() - t0, 0.5)
            # Closed before READY: no session, outcome closed:<code>.
            w = await websockets.connect(gw.url, ping_interval=None, close_timeout=3)
            await w.recv()
            ident["d"]["shard"] = [1, 2]
            await w.send(json.dumps(ident))
            await w.close(4000)
            # A second IDENTIFY while one is pending: 4005.
            x = await websockets.connect(gw.url, ping_interval=None, close_timeout=3)
            await x.recv()
            await x.send(json.dumps(ident))
            await x.send(json.dumps(ident))
            with self.assertRaises(websockets.ConnectionClosed):
                await asyncio.wait_for(x.recv(), 5)
            self.assertEqual(x.close_code, 4005)
            await ws.close(4000)

        asyncio.run(asyncio.wait_for(go(), 20))
        st = gw.settled(lambda st: len(st["identifies"]) == 4 and not st["open"])
        self.assertEqual([(i["shard"], i["outcome"]) for i in st["identifies"]],
                         [(0, "ready"), (1, "closed:4000"), (1, "closed:4005"),
                          (1, "closed:4005")])
        self.assertEqual(sorted(st["sessions"]), ["0"])

    def test_cluster_identifies_again_after_4009(self):
        gw = self.gateway("--shards", "1", "--identify-interval", "0",
                          "--dispatch-interval", "0.2")
        q = self.queue()
        c = self.cluster(gw, [0], 1, q)
        c.out.wait(r"^READY$")
        sid = c.sessions()["0"]["session_id"]

        async def take_over():
            ws = await websockets.connect(gw.url + "/resume", ping_interval=None,
                                          close_timeout=3)
            await ws.recv()
            await ws.send(json.dumps({"op": 6, "d": {"token": TOKEN, "session_id": sid,
                                                     "seq": 1}}))
            while json.loads(await asyncio.wait_for(ws.recv(), 5))["t"] != "RESUMED":
                pass
            return ws

        async def go():
            ws = await take_over()
            # The cluster's shard got 4009: a new session, through the queue.
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: c.out.wait(r"^SESSION 0 (?!%s)[0-9a-f]+ 1 " % sid, 20))
            await ws.close(4000)

        asyncio.run(asyncio.wait_for(go(), 30))
        self.assertIn("4009", c.err.text())
        self.assertEqual(q.count(), 2)
        c.proc.send_signal(signal.SIGTERM)
        self.assertEqual(c.wait(), 0)
        st = gw.settled()
        self.assertEqual(st["closes"].get("4009"), 1)
        self.assertEqual(st["identify_count"], 2)
        self.assertEqual(st["resumed_count"], 1)

    def test_cluster_paced_identify_stop_resume_and_refused_resume(self):
        gw = self.gateway("--shards", "4", "--max-concurrency", "2",
                          "--identify-interval", "0.3", "--dispatch-interval", "0.2",
                          "--heartbeat-interval", "1000")
        q = self.queue(interval=0.5, max_concurrency=2)
        c1 = self.cluster(gw, [0, 1, 2, 3], 4, q, mc=2)
        c1.out.wait(r"^READY$", 20)
        st = gw.stats()
        self.assertEqual(st["identify_count"], 4)
        self.assertEqual(outcomes(st["identifies"]), ["ready"] * 4)
        self.assertEqual(st["invalid_sessions"], 0)
        self.assertEqual(st["max_open_per_shard"], 1)
        self.assertEqual(st["remaining"], 996)
        self.assertEqual(st["open"], {"0": 1, "1": 1, "2": 1, "3": 1})
        for b in (0, 1):
            ts = sorted(i["t"] for i in st["identifies"] if i["bucket"] == b)
            self.assertEqual(len(ts), 2)
            self.assertGreaterEqual(ts[1] - ts[0], 0.3)
        self.assertEqual(sorted(s for s, _ in q.requests), [0, 1, 2, 3])
        for s in range(4):
            c1.out.wait(r"^SESSION %d [0-9a-f]+ 1 ws://127\.0\.0\.1:%d/resume$" % (s, gw.port))
        time.sleep(0.6)  # a few events, so the sessions have a seq to resume from

        # SIGTERM: close code 4000 (resumable), final SESSION lines, exit 0.
        c1.proc.send_signal(signal.SIGTERM)
        self.assertEqual(c1.wait(), 0)
        st = gw.settled(lambda st: sum(st["closes"].values()) == 4 and not st["open"])
        self.assertEqual(st["closes"], {"4000": 4})
        self.assertEqual(st["open"], {})
        sessions = c1.sessions()
        self.assertEqual(sorted(sessions), ["0", "1", "2", "3"])
        for k, s in sessions.items():
            self.assertEqual(s["session_id"], st["sessions"][k]["session_id"])
            # An event may have been in flight at the close: RESUME replays it.
            self.assertLessEqual(s["seq"], st["sessions"][k]["seq"])
            self.assertGreater(s["seq"], 1)

        # A new cluster with those sessions resumes every shard: no identify, no queue.
        asked = q.count()
        c2 = self.cluster(gw, [0, 1, 2, 3], 4, q, sessions=sessions, mc=2)
        c2.out.wait(r"^READY$", 20)
        st = gw.stats()
        self.assertEqual(st["resumed_count"], 4)
        self.assertEqual(st["identify_count"], 4)
        self.assertEqual(st["remaining"], 996)
        self.assertEqual(st["max_open_per_shard"], 1)
        self.assertEqual(st["double_sessions"], [])
        self.assertEqual(q.count(), asked)
        for k, s in sessions.items():
            self.assertEqual(st["sessions"][k]["session_id"], s["session_id"])
            c2.out.wait(r"^SESSION %s %s " % (k, s["session_id"]))

        # EOF on stdin stops it like SIGTERM.
        time.sleep(0.3)
        c2.proc.stdin.close()
        self.assertEqual(c2.wait(), 0)
        sessions = c2.sessions()
        st = gw.settled(lambda st: sum(st["closes"].values()) == 8 and not st["open"])
        self.assertEqual(st["closes"], {"4000": 8})

        # The gateway refuses every resume: the cluster identifies through the queue.
        gw.config(refuse_resume=True)
        c3 = self.cluster(gw, [0, 1, 2, 3], 4, q, sessions=sessions, mc=2)
        c3.out.wait(r"^READY$", 30)
        st = gw.stats()
        self.assertEqual(outcomes(st["resumes"][4:]), ["invalid_session"] * 4)
        self.assertEqual(st["resumed_count"], 4)
        self.assertEqual(st["identify_count"], 8)
        self.assertEqual(st["invalid_sessions"], 0)
        self.assertEqual(st["max_open_per_shard"], 1)
        self.assertEqual(q.count(), asked + 4)
        for k, s in sessions.items():
            new = st["sessions"][k]["session_id"]
            self.assertNotEqual(new, s["session_id"])
            c3.out.wait(r"^SESSION %s %s 1 " % (k, new))
        c3.proc.send_signal(signal.SIGINT)
        self.assertEqual(c3.wait(), 0)
        self.assertEqual(gw.settled()["open"], {})

    def test_cluster_fatal_closes(self):
        gw = self.gateway("--shards", "2", "--identify-interval", "0",
                          "--disallowed-intents", "2")
        q = self.queue()
        # Wrong token: 4004, FATAL on stdout, exit 1.
        c = self.cluster(gw, [0, 1], 2, q, token="wrong.TOKEN-value")
        self.assertEqual(c.wait(), 1)
        self.assertRegex(c.out.text(), r"(?m)^FATAL 4004 shard=[01] \S")
        self.assertNotIn("READY", c.out.text())
        self.assertGreaterEqual(gw.stats()["closes"].get("4004", 0), 1)
        # Disallowed intents (2: GUILD_MEMBERS): 4014.
        c = self.cluster(gw, [0, 1], 2, q, extra_env={"DISCLUSTER_INTENTS": "3"})
        self.assertEqual(c.wait(), 1)
        self.assertRegex(c.out.text(), r"(?m)^FATAL 4014 shard=[01] \S")
        # A shard the gateway closes with 4011 (set at run time).
        gw.config(fatal_shards={"1": 4011})
        c = self.cluster(gw, [0, 1], 2, q)
        self.assertEqual(c.wait(), 1)
        self.assertRegex(c.out.text(), r"(?m)^FATAL 4011 shard=1 \S")
        st = gw.settled()
        for code in ("4004", "4014", "4011"):
            self.assertIn("closed:" + code, [i["outcome"] for i in st["identifies"]])
        self.assertEqual(st["open"], {})

    def test_cluster_without_a_usable_queue_exits_2(self):
        gw = self.gateway("--shards", "2", "--identify-interval", "0")
        c = self.cluster(gw, [0, 1], 2, None)
        self.assertEqual(c.wait(), 2)
        self.assertIn("DISCLUSTER_IDENTIFY_URL", c.err.text())
        for status in (403, 404, 400):
            q = self.queue(status=status)
            c = self.cluster(gw, [1], 2, q)
            self.assertEqual(c.wait(), 2, status)
            self.assertIn("HTTP %d" % status, c.err.text())
        c = self.cluster(gw, [2], 2, self.queue())  # not a shard of a 2-shard bot
        self.assertEqual(c.wait(), 2)
        for bad in ({"DISCORD_GATEWAY_URL": "http://127.0.0.1:1"}, {"SHARD_COUNT": "two"},
                    {"DISCLUSTER_IDENTIFY_URL": "http://127.0.0.1:99999/q"},
                    {"DISCLUSTER_INTENTS": "all"}, {"DISCORD_TOKEN": ""}):
            c = self.cluster(gw, [0], 2, self.queue(), extra_env=bad)
            self.assertEqual(c.wait(), 2, bad)
            self.assertRegex(c.err.text(), r"must be|is empty", bad)
        st = gw.settled()
        self.assertEqual(st["identify_count"], 0)
        self.assertEqual(st["open"], {})


if __name__ == "__main__":
    unittest.main(verbosity=2)
