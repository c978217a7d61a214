"""Transport hardening: unidentified-connection lockout, fragment and pong
amplification, pipelined request heads, framing errors.

The real binary on loopback. The attacker is raw sockets bound to other
loopback source addresses (127.0.0.2, 127.0.0.3, ...), so the per-address
limit and the global cap are exercised separately; the honest peers are
python3-websockets and curl from 127.0.0.1.
"""
import asyncio
import json
import os
import selectors
import socket
import subprocess
import threading
import time
import unittest

from harness import (OP_ACK, OP_HEARTBEAT, OP_INFO, Master, connect, hello, http_get, info,
                     raw_request, raw_upgrade, read_close_code, recv, recv_op, rss_kib, run,
                     send, tcp_connect, ws_frame)

SECRET = "hardening-secret-Value"
# Under ASan, freed memory would sit in its quarantine and count as RSS.
NO_QUARANTINE = {"ASAN_OPTIONS": ":".join(
    o for o in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=0",
                "thread_local_quarantine_size_kb=0") if o)}
AUTH = {"Authorization": SECRET}
MASTER_ARGS = ["--shards", "4", "--collect-window", "600", "--log-level", "debug"]


class SlowHeads(threading.Thread):
    """Half-sent request heads from given source addresses; with refresh on,
    every one MASTER closes is opened again at once."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "

    def __init__(self, port, sources, per_source):
        super().__init__(daemon=True)
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.order = 0
        self.closed = 0
        self.refresh = False
        self.done = False
        for src in sources:
            for _ in range(per_source):
                self._open(src)

    def _open(self, src):
        s = socket.socket()
        s.bind((src, 0))
        s.connect(("127.0.0.1", self.port))
        s.sendall(self.HEAD)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, (src, self.order))
        self.order += 1

    def poll(self, timeout):
        for key, _ in self.sel.select(timeout):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
            self.closed += 1
            if self.refresh:
                try:
                    self._open(key.data[0])
                except OSError:
                    pass

    def wait_closed(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while self.closed < n and time.monotonic() < deadline:
            self.poll(0.05)
        self.poll(0.3)  # nothing more should go
        return self.closed

    def alive(self):
        return [key.data for key in self.sel.get_map().values()]

    def run(self):
        self.refresh = True
        while not self.done:
            self.poll(0.02)

    def close(self):
        self.done = True
        if self.is_alive():
            self.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


def curl_healthz(port):
    r = subprocess.run(["curl", "-s", "--max-time", "5", "http://127.0.0.1:%d/healthz" % port],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
    return r.returncode == 0 and r.stdout == b"ok\n"


class Lockout(unittest.TestCase):
    """Held slow heads never keep honest CONTROLs or /healthz out."""

    @classmethod
    def setUpClass(cls):
        # the head timeout is long: here the limits alone must protect
        cls.m = Master(*MASTER_ARGS, "--head-timeout", "120", auth=SECRET)

    @classmethod
    def tearDownClass(cls):
        cls.m.stop()
        cls.m.__exit__()

    def honest_rounds(self, tag, n=25):
        """n honest CONTROLs (info -> initialise) and n curl /healthz; successes."""
        ok = 0

        async def control(i):
            try:
                ws, init = await hello(self.m, "%s-%d" % (tag, i), AUTH)
                await ws.close()
                return init["d"]["shard_count"] == 4
            except Exception:
                return False
        for i in range(n):
            if run(control(i)) and curl_healthz(self.m.port):
                ok += 1
        return ok

    def test_per_address_limit_evicts_that_address_oldest(self):
        heads = SlowHeads(self.m.port, ["127.0.0.2"], 300)
        try:
            self.assertEqual(heads.wait_closed(300 - 32), 300 - 32)
            alive = sorted(order for _, order in heads.alive())
            self.assertEqual(alive, list(range(300 - 32, 300)))  # the newest 32 stay
            self.m.wait_log(r"over 32 unidentified connections from 127\.0\.0\.2", 5)
            heads.start()
            self.assertEqual(self.honest_rounds("pa"), 25)
        finally:
            heads.close()

    def test_global_cap_evicts_from_the_most_crowded_address(self):
        sources = ["127.0.0.%d" % i for i in range(3, 23)]  # 20 x 20 = 400 > 256
        heads = SlowHeads(self.m.port, sources, 20)
        try:
            self.assertEqual(heads.wait_closed(400 - 256), 400 - 256)
            per = {}
            for src, _ in heads.alive():
                per[src] = per.get(src, 0) + 1
            self.assertEqual(sum(per.values()), 256)
            self.assertLessEqual(max(per.values()) - min(per.values()), 1, per)
            heads.start()
            self.assertEqual(self.honest_rounds("gc"), 25)
        finally:
            heads.close()


class HeadTimeout(unittest.TestCase):
    """The request head has its own, shorter deadline than `info`."""

    def test_head_and_info_deadlines_are_separate(self):
        with Master(*MASTER_ARGS, "--head-timeout", "0.5", "--handshake-timeout", "2.5") as m:
            s = socket.create_connection(("127.0.0.1", m.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            s.settimeout(5)
            self.assertEqual(s.recv(10), b"")
            self.assertLess(time.monotonic() - t0, 2.0)
            s.close()
            m.wait_log(r"no complete request head within 0\.5s", 5)

            async def go():
                ws = await connect(m)
                await asyncio.sleep(1.0)  # past the head timeout: still open
                await send(ws, OP_INFO, info("late-but-fine"))
                await recv(ws)
                await ws.close()
                ws2 = await connect(m)
                t1 = time.monotonic()
                try:
                    await asyncio.wait_for(ws2.recv(), 6)
                except Exception:
                    pass
                self.assertEqual(ws2.close_code, 4002)
                self.assertGreater(time.monotonic() - t1, 2.0)  # the info deadline
            run(go())
            m.stop()


class Amplification(unittest.TestCase):
    """Memory per connection stays near the bounds whatever the peer sends."""

    @classmethod
    def setUpClass(cls):
        cls.m = Master(*MASTER_ARGS, auth=SECRET, env=NO_QUARANTINE)

    @classmethod
    def tearDownClass(cls):
        cls.m.stop()
        cls.m.__exit__()

    def identified(self, id, rcvbuf=None, sndbuf=None):
        s = raw_upgrade(self.m, rcvbuf=rcvbuf, sndbuf=sndbuf, auth=SECRET)
        s.sendall(ws_frame(json.dumps({"o": OP_INFO, "d": info(id)}).encode()))
        return s

    def test_one_byte_fragments_cost_no_more_than_the_message(self):
        key = b"\x01\x02\x03\x04"
        one = bytes([0x00, 0x80 | 1]) + key + bytes([ord("a") ^ key[0]])  # continuation
        first = bytes([0x01, 0x80 | 1]) + key + bytes([ord("a") ^ key[0]])  # text, not fin
        frames = first + one * (1048000 - 1)
        ping = ws_frame(b"sync", op=9)
        socks = [self.identified("frag-%d" % i) for i in range(3)]
        try:
            time.sleep(0.3)
            before = rss_kib(self.m.proc.pid)
            for s in socks:
                s.sendall(frames + ping)
            for s in socks:  # the pong comes after every fragment was taken in
                s.settimeout(30)
                data = b""
                while b"sync" not in data:
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, "closed before the pong")
                    data += chunk
            grown = rss_kib(self.m.proc.pid) - before
            print("RSS grew by %d KiB for 3 x 1,048,000 one-byte fragments" % grown)
            self.assertLess(grown, 2 * 3 * 1024, "3 unfinished 1 MiB messages cost %d KiB" % grown)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)

    def test_fragmented_message_over_the_bound_closes_1009(self):
        s = self.identified("frag-big")
        chunk = b"x" * 65536
        s.sendall(ws_frame(chunk, op=1, fin=False))
        try:
            for _ in range(20):
                s.sendall(ws_frame(chunk, op=0, fin=False))
        except OSError:
            pass
        self.assertEqual(read_close_code(s), 1009)
        s.close()

    def test_pings_from_a_peer_that_never_reads(self):
        # small segments: see test_peer_that_stops_reading_is_not_read_then_cut
        pinger = self.identified("pinger", rcvbuf=4096, sndbuf=32768)
        ping = ws_frame(b"", op=9) * 10000
        before = rss_kib(self.m.proc.pid)
        done = threading.Event()

        def flood():
            try:
                for _ in range(300):  # 3,000,000 pings
                    pinger.sendall(ping)
            except OSError:
                pass
            done.set()
        t = threading.Thread(target=flood, daemon=True)

        async def honest():
            ws, _ = await hello(self.m, "steady", AUTH)
            t.start()
            acks = 0
            while not done.is_set() or acks < 5:
                await send(ws, OP_HEARTBEAT, {})
                p = await recv_op(ws, OP_ACK, 5)
                self.assertEqual(p["d"], {"o": OP_HEARTBEAT})
                acks += 1
                await asyncio.sleep(0.05)
            await ws.close()
            return acks
        acks = run(honest())
        t.join(30)
        grown = rss_kib(self.m.proc.pid) - before
        print("RSS grew by %d KiB after 3,000,000 unread pings; %d heartbeat acks" % (grown, acks))
        self.assertLess(grown, 16 * 1024, "a peer that never reads cost %d KiB" % grown)
        pinger.close()
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)


class Pipelining(unittest.TestCase):
    """One request head per connection; what follows it is never a second head."""
    MASTER_KW = {}  # test_tls_protocol runs these tests again over TLS

    @classmethod
    def setUpClass(cls):
        cls.m = Master(*MASTER_ARGS, auth=SECRET, **cls.MASTER_KW)

    @classmethod
    def tearDownClass(cls):
        cls.m.stop()
        cls.m.__exit__()

    def test_second_request_is_not_merged(self):
        out = raw_request(self.m, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                       b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                       + SECRET.encode() + b"\r\n\r\n")
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"), out)
        self.assertTrue(out.endswith(b"\r\n\r\nok\n"), out)

    def test_upgrade_after_a_plain_request_is_ignored(self):
        out = raw_request(self.m, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out)
        self.assertTrue(out.startswith(b"HTTP/1.1 404"), out)

    def test_bytes_after_an_upgrade_head_are_frames(self):
        s = raw_upgrade(self.m, auth=SECRET)
        s.close()
        s = tcp_connect(self.m, None)
        head = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Authorization: %s\r\n\r\n" % SECRET).encode()
        s.sendall(head + ws_frame(json.dumps({"o": OP_INFO, "d": info("piped")}).encode()))
        s.settimeout(5)
        data = b""
        while b"heartbeat_interval" not in data:
            chunk = s.recv(65536)
            self.assertTrue(chunk, data)
            data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 101"), data[:40])
        s.close()


class FramingErrors(unittest.TestCase):
    """A framing error is answered with close 1002 before the socket closes."""
    MASTER_KW = {}

    @classmethod
    def setUpClass(cls):
        cls.m = Master(*MASTER_ARGS, auth=SECRET, **cls.MASTER_KW)

    @classmethod
    def tearDownClass(cls):
        cls.m.stop()
        cls.m.__exit__()

    def test_framing_errors_close_1002(self):
        key = b"\x00\x00\x00\x00"
        cases = {
            "ping over 125 bytes": ws_frame(b"p" * 126, op=9),
            "reserved data opcode": ws_frame(b"x", op=3),
            "reserved control opcode": ws_frame(b"x", op=0xB),
            "fragmented ping": ws_frame(b"x", op=9, fin=False),
            "non-minimal length": bytes([0x81, 0x80 | 126, 0, 5]) + key + b"hello",
            "reserved bit": bytes([0x80 | 0x40 | 1, 0x80 | 1]) + key + b"x",
            "continuation first": ws_frame(b"x", op=0),
        }
        for what, frame in cases.items():
            s = raw_upgrade(self.m, auth=SECRET)
            s.sendall(frame)
            self.assertEqual(read_close_code(s), 1002, what)
            s.close()
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
