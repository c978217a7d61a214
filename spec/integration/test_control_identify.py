"""discluster-control: the fleet-wide identify queue, CONTROL side.

The real agent runs against a scripted MASTER (python3-websockets). Its
clusters ask the agent's loopback identify endpoint with curl before each
IDENTIFY; the tests also talk to that endpoint with raw sockets for the
answers a well-behaved cluster never provokes. Checked: the cluster
environment, identify/grant/release/error 4007 on the wire, every HTTP
status of the endpoint, re-sending after a reconnect, a new URL per run,
and which FATAL codes are relayed.
"""
import asyncio
import os
import re
import signal
import socket
import subprocess
import unittest
import unittest.mock
import uuid

from control_harness import (CONTROL_BIN, IDENTIFY_URL, FakeMaster, Fleet, alive, ident_answer, ident_get,
                             ident_open, initialise, wait_for)

OP_INFO, OP_FATAL, OP_SHUTDOWN, OP_INITIALISE, OP_CONNECT = 0, 1, 4, 5, 6
OP_ERROR, OP_ACK, OP_READY = 7, 8, 10
OP_IDENTIFY, OP_GRANT, OP_RELEASE = 11, 12, 13

TOKEN = "tok-" + uuid.uuid4().hex  # must never reach the agent's log

# Records its environment; with ASK set, asks the identify endpoint (curl)
# for each of its shards in turn and records the answers; with FATAL_CODE
# set, prints that FATAL on its first run and keeps running without READY.
IDENTIFY_CLUSTER = r"""#!/bin/sh
d="$TEST_DIR"
env > "$d/cluster.$$.env"
echo "start $$ $SHARD_IDS" >> "$d/starts"
run=$(cat "$d/runs.$CLUSTER_ID" 2>/dev/null || echo 0)
echo $((run + 1)) > "$d/runs.$CLUSTER_ID"
if [ -n "$ASK" ]; then
  for s in $(echo "$SHARD_IDS" | tr , ' '); do
    code=$(curl -s -o "$d/body.$$.$s" -w '%{http_code}' "$DISCLUSTER_IDENTIFY_URL?shard=$s")
    echo "asked $$ $s $code" >> "$d/asked"
    echo "identify shard $s: $code"
  done
fi
if [ -n "$FATAL_CODE" ] && [ "$run" = 0 ]; then
  echo "FATAL $FATAL_CODE shard=${SHARD_IDS%%,*} Something went wrong"
  exec cat >/dev/null
fi
echo READY
exec cat >/dev/null
"""


def asked(fleet):
    """[(pid, shard, status)] of every curl the clusters made, in order."""
    try:
        with open(os.path.join(fleet.dir, "asked")) as f:
            rows = [line.split() for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return []
    return [(int(p), int(s), int(c)) for _, p, s, c in rows]


def body(fleet, pid, shard):
    with open(os.path.join(fleet.dir, "body.%d.%d" % (pid, shard))) as f:
        return f.read()


class Identify(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        self.cmd = self.fleet.script("identify", IDENTIFY_CLUSTER)
        self.agents = []

    def tearDown(self):
        for a in self.agents:
            self.assertNotIn(TOKEN, a.log())
        self.fleet.close()

    async def session(self, shards, shard_count, args=(), env=None, **init):
        """Fake MASTER + agent, initialised and connected with shards."""
        fm = FakeMaster()
        await fm.start()
        a = self.fleet.agent(fm.port, "ident", *args, command=self.cmd, env=env)
        self.agents.append(a)
        peer = await fm.accept()
        info = (await peer.recv(OP_INFO))["d"]
        self.assertIs(info["identify_queue"], True)
        await peer.send(OP_INITIALISE, initialise(shard_count, token=TOKEN, **init))
        await peer.send(OP_CONNECT, {"shards": shards, "redundant": False})
        await peer.recv(OP_ACK)
        return fm, a, peer

    def urls(self, n):
        """{shard ids string: identify URL} once n clusters have started."""
        envs = wait_for(lambda: len(self.fleet.envs()) >= n and self.fleet.envs(), 10,
                        "%d clusters started" % n)
        return {e["SHARD_IDS"]: e["DISCLUSTER_IDENTIFY_URL"] for e in envs.values()}

    async def stop(self, fm, a, peer):
        peer.release()
        await fm.stop()
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(15), 0, a.log())

    def test_environment_and_grants(self):
        f = self.fleet

        async def go():
            # Inherited values of the cluster variables never reach clusters.
            env = {"ASK": "1", "DISCLUSTER_IDENTIFY_URL": "http://evil/", "MAX_CONCURRENCY": "99",
                   "DISCORD_GATEWAY_URL": "wss://evil", "SHARD_IDS": "42"}
            fm, a, peer = await self.session([0, 1, 2, 3], 4, ("--shards-per-cluster", "2"), env,
                                             max_concurrency=2,
                                             gateway_url="wss://gateway.test/?v=10")
            # Each cluster asks for its first shard; they wait for grants.
            first = {(await peer.recv(OP_IDENTIFY))["d"]["shard"] for _ in range(2)}
            self.assertEqual(first, {0, 2})
            envs = list(f.envs().values())
            self.assertEqual(len(envs), 2)
            urls = set()
            for e in envs:
                self.assertIn(e["SHARD_IDS"], ("0,1", "2,3"))
                self.assertEqual(e["SHARD_COUNT"], "4")
                self.assertEqual(e["DISCORD_TOKEN"], TOKEN)
                self.assertEqual(e["MAX_CONCURRENCY"], "2")
                self.assertEqual(e["DISCORD_GATEWAY_URL"], "wss://gateway.test/?v=10")
                self.assertRegex(e["DISCLUSTER_IDENTIFY_URL"], IDENTIFY_URL)
                urls.add(e["DISCLUSTER_IDENTIFY_URL"])
            self.assertEqual(len(urls), 2)  # one URL per cluster
            self.assertNotIn("DISCLUSTER_AUTH", envs[0])
            self.assertEqual(asked(f), [])
            # Each grant answers its request 200; the cluster then asks for the next.
            await peer.send(OP_GRANT, {"shard": 2})
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 3})
            await peer.send(OP_GRANT, {"shard": 0})
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 1})
            await peer.send(OP_GRANT, {"shard": 3})
            await peer.send(OP_GRANT, {"shard": 1})
            await peer.recv(OP_READY, where=lambda d: d["shards"] == [0, 1, 2, 3])
            got = asked(f)
            self.assertEqual(sorted((s, c) for _, s, c in got), [(0, 200), (1, 200), (2, 200),
                                                                 (3, 200)])
            for pid, s, _ in got:
                self.assertEqual(body(f, pid, s), '{"shard":%d}' % s)
            self.assertFalse([p for p in peer.seen if p["o"] == OP_RELEASE])
            a.wait_log(r"cluster \d may identify shard 3", 2)
            await self.stop(fm, a, peer)

        asyncio.run(go())

    def test_bad_requests_and_bounds(self):
        async def go():
            fm, a, peer = await self.session([0, 1, 2, 3], 8, ("--shards-per-cluster", "2"))
            urls = self.urls(2)
            u0, u1 = urls["0,1"], urls["2,3"]
            port = int(IDENTIFY_URL.match(u0).group(1))
            base = "http://127.0.0.1:%d" % port
            # A client that never finishes its head: 408 after the head deadline.
            slow = ident_open(u0, head=b"GET /")
            # Unknown paths: 404, whatever the query.
            for path in ("/" + "0" * 32, "/", "/favicon.ico", "/" + uuid.uuid4().hex,
                         u0[len(base):].upper(), u0[len(base):] + "/"):
                self.assertEqual(ident_get(base + path, "?shard=0")[0], 404, path)
            self.assertEqual(ident_get(base + "/" + "0" * 32, "?shard=x")[0], 404)
            # No usable shard: 400.
            for q in ("", "?", "?shard", "?shard=", "?shard=abc", "?shard=-1", "?shard=1x",
                      "?shard=0&shard=0", "?shard=99999999999"):
                self.assertEqual(ident_get(u0, q)[0], 400, q)
            # Another cluster's shard, or no cluster's: 403.
            status, text = ident_get(u0, "?shard=2")
            self.assertEqual(status, 403)
            self.assertIn("not this cluster's shard", text)
            self.assertEqual(ident_get(u1, "?shard=0")[0], 403)
            self.assertEqual(ident_get(u0, "?shard=7")[0], 403)
            # Methods, long targets, long heads, garbage.
            self.assertEqual(ident_get(u0, "?shard=0", method="POST")[0], 405)
            self.assertEqual(ident_get(u0, "?shard=0&pad=" + "x" * 600)[0], 414)
            big = ("GET %s?shard=0 HTTP/1.1\r\nX-Pad: %s\r\n\r\n"
                   % (u0[len(base):], "y" * 9000)).encode()
            self.assertEqual(ident_answer(ident_open(u0, head=big))[0], 431)
            self.assertEqual(ident_answer(ident_open(u0, head=b"HELLO\r\n\r\n"))[0], 400)
            # None of that reached MASTER.
            self.assertFalse([p for p in peer.seen if p["o"] in (OP_IDENTIFY, OP_RELEASE)])
            # A second request for a shard already waiting: 409; the first still gets its grant.
            first = ident_open(u0, "?shard=0")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            self.assertEqual(ident_get(u0, "?shard=0")[0], 409)
            await peer.send(OP_GRANT, {"shard": 0})
            status, headers, text = await asyncio.to_thread(ident_answer, first)
            self.assertEqual((status, text), (200, '{"shard":0}'))
            self.assertEqual(headers["content-type"], "application/json")
            # Extra bytes after a waiting request are ignored (the request still waits).
            second = ident_open(u1, "?shard=3", extra=b"junk after the head")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 3})
            await peer.send(OP_GRANT, {"shard": 3})
            self.assertEqual((await asyncio.to_thread(ident_answer, second))[0], 200)
            # The slow client got 408 and the endpoint still serves.
            self.assertEqual((await asyncio.to_thread(ident_answer, slow, 30))[0], 408)
            third = ident_open(u0, "?shard=1")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 1})
            await peer.send(OP_GRANT, {"shard": 1})
            self.assertEqual((await asyncio.to_thread(ident_answer, third))[0], 200)
            self.assertFalse([p for p in peer.seen if p["o"] == OP_RELEASE])
            await self.stop(fm, a, peer)

        asyncio.run(go())

    def test_refusal_client_gone_and_stray_grant(self):
        async def go():
            fm, a, peer = await self.session([0, 1], 4)
            u = self.urls(1)["0,1"]
            # error 4007 naming the shard: 403.
            refused = ident_open(u, "?shard=0")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            await peer.send(OP_ERROR, {"code": 4007, "message": "not yours", "shard": 0})
            status, _, text = await asyncio.to_thread(ident_answer, refused)
            self.assertEqual(status, 403)
            self.assertIn("MASTER refused", text)
            # A client that gives up: its request is released at MASTER.
            gone = ident_open(u, "?shard=1")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 1})
            gone.close()
            self.assertEqual((await peer.recv(OP_RELEASE))["d"], {"shard": 1})
            # A waiting client that keeps sending: 400 past 8 KiB, and released.
            chatty = ident_open(u, "?shard=1")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 1})
            chatty.sendall(b"z" * 9000)
            self.assertEqual((await asyncio.to_thread(ident_answer, chatty))[0], 400)
            self.assertEqual((await peer.recv(OP_RELEASE))["d"], {"shard": 1})
            # A grant nobody waits for goes straight back.
            await peer.send(OP_GRANT, {"shard": 0})
            self.assertEqual((await peer.recv(OP_RELEASE))["d"], {"shard": 0})
            # Errors that name no waiting request change nothing; bad grants are ignored.
            await peer.send(OP_ERROR, {"code": 4007, "message": "not yours", "shard": 1})
            await peer.send(OP_ERROR, {"code": 4007, "message": "no shard"})
            await peer.send(OP_GRANT, {"shard": "0"})
            again = ident_open(u, "?shard=0")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            await peer.send(OP_GRANT, {"shard": 0})
            self.assertEqual((await asyncio.to_thread(ident_answer, again))[0], 200)
            a.wait_log(r"ignoring a bad packet from MASTER: grant: d.shard", 2)
            self.assertEqual(len([p for p in peer.seen if p["o"] == OP_RELEASE]), 3)
            await self.stop(fm, a, peer)

        asyncio.run(go())

    def test_reconnect_resends_waiting_identifies(self):
        async def go():
            fm, a, peer = await self.session([0, 1, 2], 3, ("--shards-per-cluster", "3"))
            u = self.urls(1)["0,1,2"]
            w0 = ident_open(u, "?shard=0")
            w1 = ident_open(u, "?shard=1")
            got = {(await peer.recv(OP_IDENTIFY))["d"]["shard"] for _ in range(2)}
            self.assertEqual(got, {0, 1})
            # MASTER drops the connection: the requests keep waiting.
            await peer.ws.close()
            peer.release()
            peer2 = await fm.accept()
            self.assertEqual((await peer2.recv(OP_INFO))["d"]["shards"], [0, 1, 2])
            # Asked while there is no session: held until the next initialise.
            w2 = ident_open(u, "?shard=2")
            a.wait_log(r"cluster 0 waits to identify shard 2 \(asking MASTER once connected\)", 5)
            self.assertFalse([p for p in peer2.seen if p["o"] == OP_IDENTIFY])
            await peer2.send(OP_INITIALISE, initialise(3, token=TOKEN))
            got = {(await peer2.recv(OP_IDENTIFY))["d"]["shard"] for _ in range(3)}
            self.assertEqual(got, {0, 1, 2})
            a.wait_log(r"asked MASTER again for 3 waiting identifies", 2)
            await peer2.send(OP_CONNECT, {"shards": [0, 1, 2], "redundant": False})
            await peer2.recv(OP_READY, where=lambda d: d["shards"] == [0, 1, 2])
            for s, w in ((1, w1), (0, w0), (2, w2)):
                await peer2.send(OP_GRANT, {"shard": s})
                self.assertEqual(await asyncio.to_thread(ident_answer, w),
                                 (200, unittest.mock.ANY, '{"shard":%d}' % s))
            self.assertEqual(len(self.fleet.starts()), 1)  # the cluster was kept throughout
            await self.stop(fm, a, peer2)

        asyncio.run(go())

    def test_regrouped_cluster_gets_a_new_url(self):
        async def go():
            fm, a, peer = await self.session([0, 1, 2, 3], 4, ("--shards-per-cluster", "4"))
            old = self.urls(1)["0,1,2,3"]
            waiting = ident_open(old, "?shard=3")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 3})
            # The group changes: the old cluster stops, its request gets 503
            # and is released; the new cluster gets a new URL.
            await peer.send(OP_CONNECT, {"shards": [0, 1], "redundant": False})
            self.assertEqual((await asyncio.to_thread(ident_answer, waiting))[0], 503)
            self.assertEqual((await peer.recv(OP_RELEASE))["d"], {"shard": 3})
            await peer.recv(OP_READY, where=lambda d: d["shards"] == [0, 1])
            new = self.urls(2)["0,1"]
            self.assertNotEqual(new, old)
            self.assertEqual(ident_get(old, "?shard=0")[0], 404)
            w = ident_open(new, "?shard=0")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            await peer.send(OP_GRANT, {"shard": 0})
            self.assertEqual((await asyncio.to_thread(ident_answer, w))[0], 200)
            await self.stop(fm, a, peer)

        asyncio.run(go())

    def test_non_fatal_fatal_restarts_the_cluster(self):
        f = self.fleet

        async def go():
            fm, a, peer = await self.session([0], 1, env={"ASK": "1", "FATAL_CODE": "4000"})
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            old = self.urls(1)["0"]
            await peer.send(OP_GRANT, {"shard": 0})
            # FATAL 4000 (an unknown error, reconnectable): a warning, no fatal
            # to MASTER; the cluster keeps running, so the agent stops it and it
            # restarts through the crash path, with a new URL, and asks again;
            # `ready` waits for the restarted cluster.
            a.wait_log(r"cluster 0 failing: FATAL 4000 on shard 0: Something went wrong", 10)
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            self.assertEqual(len(f.starts()), 2)
            pids = [p for p, _ in f.starts()]
            new = f.envs()[pids[1]]["DISCLUSTER_IDENTIFY_URL"]
            self.assertNotEqual(new, old)
            self.assertEqual(ident_get(old, "?shard=0")[0], 404)
            await peer.send(OP_GRANT, {"shard": 0})
            await peer.recv(OP_READY, where=lambda d: d["shards"] == [0])
            self.assertEqual([(s, c) for _, s, c in asked(f)], [(0, 200), (0, 200)])
            self.assertFalse([p for p in peer.seen if p["o"] == OP_FATAL])
            log = a.log()
            self.assertIn("SIGTERM so it restarts", log)
            self.assertIn("restart 1 of 3", log)
            self.assertNotIn("relayed fatal", log)
            await self.stop(fm, a, peer)

        asyncio.run(go())

    def test_fatal_4014_is_relayed(self):
        f = self.fleet

        async def go():
            fm, a, peer = await self.session([0, 1], 2, env={"FATAL_CODE": "4014"})
            fatal = await peer.recv(OP_FATAL)
            self.assertEqual(fatal["d"], {"code": 4014, "shard": 0,
                                          "message": "Something went wrong"})
            a.wait_log(r"relayed fatal 4014", 2)
            u = self.urls(1)["0,1"]
            waiting = ident_open(u, "?shard=1")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 1})
            # A real fatal does not restart the cluster; MASTER decides.
            await asyncio.sleep(1.5)
            self.assertEqual(len(f.starts()), 1)
            self.assertNotIn("failing", a.log())
            # shutdown: the waiting request gets 503 and is released.
            await peer.send(OP_SHUTDOWN, {"code": 4014, "reason": "Disallowed intents"})
            self.assertEqual((await asyncio.to_thread(ident_answer, waiting))[0], 503)
            self.assertEqual((await peer.recv(OP_RELEASE))["d"], {"shard": 1})
            self.assertEqual(await asyncio.to_thread(a.wait, 15), 0, a.log())
            for pid, _ in f.starts():
                wait_for(lambda: not alive(pid), 5, "cluster %d gone" % pid)
            peer.release()
            await fm.stop()

        asyncio.run(go())

    def test_connection_bound(self):
        async def go():
            fm, a, peer = await self.session([0], 1)
            u = self.urls(1)["0"]
            # 1024 connections that have not finished their head fill the endpoint...
            held = [ident_open(u, head=b"GET /") for _ in range(1024)]
            # ...so the next ones are answered 503 at once,
            for _ in range(3):
                status, text = ident_get(u, "?shard=0")
                self.assertEqual(status, 503)
                self.assertIn("too many open requests", text)
            # and once they are gone it serves again.
            for s in held:
                s.close()
            def served():
                w = ident_open(u, "?shard=0")
                try:
                    w.settimeout(0.2)
                    data = w.recv(100)  # a 503 comes at once; a waiting request sends nothing
                    return False if data else None
                except socket.timeout:
                    return w
            w = wait_for(served, 10, "the endpoint to accept requests again")
            self.assertEqual((await peer.recv(OP_IDENTIFY))["d"], {"shard": 0})
            await peer.send(OP_GRANT, {"shard": 0})
            self.assertEqual((await asyncio.to_thread(ident_answer, w))[0], 200)
            await self.stop(fm, a, peer)

        asyncio.run(go())

    def test_fixed_port_and_busy_port(self):
        # --identify-port: the URL uses it; a port in use is a clear error, exit 1.
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = self.fleet.agent(fm.port, "busy", "--identify-port", str(port), command=self.cmd)
            self.agents.append(a)
            self.assertEqual(await asyncio.to_thread(a.wait, 15), 1, a.log())
            self.assertRegex(a.log(), r"cannot listen on 127\.0\.0\.1:%d for the identify "
                                      r"endpoint: address already in use" % port)
            busy.close()
            fm2_port = fm.port
            b = self.fleet.agent(fm2_port, "fixed", "--identify-port", str(port),
                                 command=self.cmd)
            self.agents.append(b)
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(1, token=TOKEN))
            await peer.send(OP_CONNECT, {"shards": [0], "redundant": False})
            url = self.urls(1)["0"]
            self.assertEqual(int(IDENTIFY_URL.match(url).group(1)), port)
            await self.stop(fm, b, peer)

        asyncio.run(go())
        for bad in ("70000", "-1", "x", ""):
            r = subprocess.run([CONTROL_BIN, "--master", "ws://127.0.0.1:1",
                                "--cluster-command", "true", "--identify-port", bad],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("--identify-port", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
