"""Protocol v1 on single connections: handshake, heartbeats, errors, bounds.

The real binary on loopback; python3-websockets as the CONTROL.
"""
import asyncio
import json
import os
import socket
import ssl
import struct
import time
import unittest

import websockets

from harness import (FAST, OP_ACK, OP_CONNECT, OP_ERROR, OP_HEARTBEAT, OP_INFO,
                     OP_INITIALISE, Master, closed_with, connect, hello, http_get, info,
                     raw_request, raw_upgrade, recv, recv_op, run, send, tcp_connect, ws_frame)

SECRET = "s3cr3t-shared-Value"
TOKEN = "Bot.T0KEN.value-never-logged"


class ProtocolV1(unittest.TestCase):
    MASTER_KW = {}  # test_tls_protocol runs these tests again over TLS

    @classmethod
    def setUpClass(cls):
        cls.m = Master("--shards", "8", "--max-concurrency", "2", "--log-level", "debug",
                       "--heartbeat-interval", "1", "--heartbeat-grace", "1",
                       "--handshake-timeout", "1.5", "--head-timeout", "1.5",
                       "--collect-window", "600",
                       token=TOKEN, auth=SECRET, **cls.MASTER_KW)
        cls.auth = {"Authorization": SECRET}

    @classmethod
    def tearDownClass(cls):
        rc = cls.m.stop()
        log = cls.m.log()
        cls.m.__exit__()
        assert rc == 0, log
        assert TOKEN not in log, "the token leaked into the log"
        assert SECRET not in log, "the shared secret leaked into the log"

    def test_healthz_needs_no_secret(self):
        status, body, _ = http_get(self.m, "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(body, "ok\n")

    def test_unknown_path_and_method(self):
        self.assertEqual(http_get(self.m, "/nope")[0], 404)
        out = raw_request(self.m, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 405"), out)

    def test_status_needs_the_secret(self):
        self.assertEqual(http_get(self.m, "/status")[0], 401)
        self.assertEqual(http_get(self.m, "/status", {"Authorization": "wrong"})[0], 401)
        status, body, hdrs = http_get(self.m, "/status", self.auth)
        self.assertEqual(status, 200)
        st = json.loads(body)
        self.assertEqual(st["shard_count"], 8)
        self.assertEqual(st["max_concurrency"], 2)
        self.assertEqual(st["state"], "collecting")
        self.assertNotIn(SECRET, body)
        self.assertNotIn(TOKEN, body)

    def test_upgrade_refused_without_or_with_wrong_secret(self):
        async def go():
            for headers in ({}, {"Authorization": "nope"}, {"Authorization": SECRET + "x"},
                            {"Authorization": "Bearer " + SECRET[:-1]}):
                with self.assertRaises(websockets.InvalidStatusCode) as cm:
                    await connect(self.m, headers)
                self.assertEqual(cm.exception.status_code, 401)
            ws = await connect(self.m, {"Authorization": "Bearer " + SECRET})
            await ws.close()
        run(go())

    def test_info_handshake_and_initialise(self):
        async def go():
            ws, init = await hello(self.m, "hs-1", self.auth, version="9.9")
            d = init["d"]
            self.assertEqual(d["protocol"], 1)
            self.assertEqual(d["token"], TOKEN)
            self.assertEqual(d["heartbeat_interval"], 1000)
            self.assertEqual(d["shard_count"], 8)
            self.assertEqual(d["max_concurrency"], 2)
            await ws.close()
            self.assertEqual(ws.close_code, 1000)
        run(go())

    def test_bad_info_closes_4002(self):
        async def go():
            bad = [
                "not json",
                json.dumps({"o": OP_HEARTBEAT, "d": {}}),
                json.dumps({"o": OP_INFO, "d": {"id": "bad id", "cores": 1, "loadavg": 0}}),
                json.dumps({"o": OP_INFO, "d": {"id": "x", "cores": 0, "loadavg": 0}}),
                json.dumps({"o": OP_INFO, "d": {"id": "x", "cores": 2, "loadavg": -1}}),
                json.dumps({"o": OP_INFO, "d": {"id": "x" * 129, "cores": 2, "loadavg": 1}}),
                json.dumps({"o": OP_INFO, "d": {"id": "x", "cores": 2}}),
                json.dumps({"o": OP_INFO}),
            ]
            for text in bad:
                ws = await connect(self.m, self.auth)
                await ws.send(text)
                self.assertEqual(await closed_with(ws), 4002, text)
        run(go())

    def test_no_info_in_time_closes_4002(self):
        async def go():
            ws = await connect(self.m, self.auth)
            t0 = time.monotonic()
            self.assertEqual(await closed_with(ws, 5), 4002)
            self.assertGreater(time.monotonic() - t0, 1.0)
        run(go())

    def test_duplicate_id_closes_the_newcomer_4003(self):
        async def go():
            first, _ = await hello(self.m, "dup-1", self.auth)
            second = await connect(self.m, self.auth)
            await send(second, OP_INFO, info("dup-1"))
            self.assertEqual(await closed_with(second), 4003)
            await send(first, OP_HEARTBEAT, {})
            ack = await recv_op(first, OP_ACK)
            self.assertEqual(ack["d"], {"o": OP_HEARTBEAT})
            await first.close()
        run(go())

    def test_heartbeat_is_acked(self):
        async def go():
            ws, _ = await hello(self.m, "hb-1", self.auth)
            for load in (None, 0.25, 3):
                await send(ws, OP_HEARTBEAT, {} if load is None else {"loadavg": load})
                p = await recv(ws)
                self.assertEqual(p, {"o": OP_ACK, "d": {"o": OP_HEARTBEAT}})
            st = json.loads(http_get(self.m, "/status", self.auth)[1])
            me = [x for x in st["machines"] if x["id"] == "hb-1"][0]
            self.assertEqual(me["loadavg"], 3)
            self.assertLess(me["last_heartbeat_age_ms"], 1000)
            await ws.close()
        run(go())

    def test_failed_clusters_show_in_status(self):
        async def go():
            ws, _ = await hello(self.m, "fc-1", self.auth)
            failed = [{"cluster": 3, "shards": [6, 7], "exit": 1, "signal": 0}]
            await send(ws, OP_HEARTBEAT, {"loadavg": 1, "failed_clusters": failed})
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            st = json.loads(http_get(self.m, "/status", self.auth)[1])
            me = [x for x in st["machines"] if x["id"] == "fc-1"][0]
            self.assertEqual(me["failed_clusters"], failed)
            await send(ws, OP_HEARTBEAT, {"failed_clusters": []})
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            st = json.loads(http_get(self.m, "/status", self.auth)[1])
            me = [x for x in st["machines"] if x["id"] == "fc-1"][0]
            self.assertNotIn("failed_clusters", me)
            # an extension field never voids a heartbeat: acknowledged, logged, ignored
            mark = self.m.mark()
            await send(ws, OP_HEARTBEAT, {"failed_clusters": "nope"})
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            self.m.wait_log(r"\[fc-1\] heartbeat: ignoring failed_clusters: failed_clusters "
                            r"must be an array", start=mark)
            # the canonical bytes (MASTER's fast path) mean what [] means: the
            # warning is re-armed, a failed set is cleared, loadavg is taken
            canonical = ('{"o":9,"d":{"loadavg":%s,"failed_clusters":[],'
                         '"failed_clusters_more":0}}')
            await ws.send(canonical % "0.5")
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            mark = self.m.mark()
            await send(ws, OP_HEARTBEAT, {"failed_clusters": "nope"})
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            self.m.wait_log(r"\[fc-1\] heartbeat: ignoring failed_clusters", start=mark)
            await send(ws, OP_HEARTBEAT, {"loadavg": 1, "failed_clusters": failed})
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            mark = self.m.mark()
            await ws.send(canonical % "2.5")
            self.assertEqual(await recv(ws), {"o": OP_ACK, "d": {"o": OP_HEARTBEAT}})
            self.m.wait_log(r"\[fc-1\] reports no failed clusters any more", start=mark)
            st = json.loads(http_get(self.m, "/status", self.auth)[1])
            me = [x for x in st["machines"] if x["id"] == "fc-1"][0]
            self.assertNotIn("failed_clusters", me)
            self.assertEqual(me["loadavg"], 2.5)
            await ws.close()
        run(go())

    def test_missed_heartbeats_close_4001(self):
        async def go():
            ws, _ = await hello(self.m, "dead-1", self.auth)
            mark = self.m.mark()
            t0 = time.monotonic()
            # keep it alive for a while, then go silent
            for _ in range(3):
                await asyncio.sleep(0.5)
                await send(ws, OP_HEARTBEAT, {})
            self.assertEqual(await closed_with(ws, 6), 4001)
            silent = time.monotonic() - t0 - 1.5
            self.assertGreater(silent, 1.8)  # interval 1 s + grace 1 s
            self.m.wait_log(r"\[dead-1\] no heartbeat", 5, mark)
        run(go())

    def test_error_packets_keep_the_connection(self):
        async def go():
            ws, _ = await hello(self.m, "err-1", self.auth)
            cases = [
                ("not json", 4004),
                ("[1,2,3]", 4004),
                (json.dumps({"d": {}}), 4004),
                (json.dumps({"o": "9", "d": {}}), 4004),
                (json.dumps({"o": 9}), 4004),
                (json.dumps({"o": 9, "d": 3}), 4004),
                (json.dumps({"o": 8, "d": {}}), 4004),
                (json.dumps({"o": 1, "d": {"code": "x"}}), 4004),
                (json.dumps({"o": 42, "d": {}}), 4005),
                (json.dumps({"o": 5, "d": {}}), 4006),
                (json.dumps({"o": 6, "d": {"shards": []}}), 4006),
                (json.dumps({"o": 10, "d": {"shards": [1]}}), 4006),
                (json.dumps({"o": 0, "d": info("someone-else")}), 4006),
            ]
            for text, code in cases:
                await ws.send(text)
                p = await recv(ws)
                self.assertEqual(p["o"], OP_ERROR, text)
                self.assertEqual(p["d"]["code"], code, text)
                self.assertIsInstance(p["d"]["message"], str)
            await send(ws, OP_HEARTBEAT, {})
            self.assertEqual((await recv(ws))["o"], OP_ACK)
            await ws.close()
        run(go())

    def test_message_over_1mib_closes_1009(self):
        async def go():
            ws, _ = await hello(self.m, "big-1", self.auth)
            try:  # MASTER may close before the whole frame is written
                await ws.send("x" * ((1 << 20) + 1))
            except websockets.ConnectionClosed:
                pass
            self.assertEqual(await closed_with(ws), 1009)
            ws2, _ = await hello(self.m, "big-2", self.auth)
            # exactly 1 MiB is allowed: it is answered (as malformed JSON)
            await ws2.send(" " * (1 << 20))
            self.assertEqual((await recv(ws2))["d"]["code"], 4004)
            await ws2.close()
        run(go())

    def test_binary_frames_are_refused(self):
        async def go():
            ws = await connect(self.m, self.auth)
            await ws.send(b"\x00\x01")
            self.assertEqual(await closed_with(ws), 1003)
        run(go())

    def test_unmasked_frames_are_a_protocol_error(self):
        s = raw_upgrade(self.m, auth=SECRET)
        s.sendall(ws_frame(b"{}", mask=False))
        s.settimeout(5)
        data = b""
        while len(data) < 4:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        self.assertEqual(data[0] & 0x0f, 8)  # close
        self.assertEqual(struct.unpack(">H", data[2:4])[0], 1002)
        s.close()

    def test_oversized_head_is_431(self):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
        out = raw_request(self.m, head)
        self.assertTrue(out.startswith(b"HTTP/1.1 431"), out[:80])
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)

    def test_malformed_head_is_400(self):
        for junk in (b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                     b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
            out = raw_request(self.m, junk)
            self.assertTrue(out.startswith(b"HTTP/1.1 400"), (junk, out[:80]))
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)

    def test_bad_upgrades(self):
        base = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Authorization: %s\r\n" % SECRET)
        key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        out = raw_request(self.m, (base + key + "\r\n").encode())  # no version
        self.assertTrue(out.startswith(b"HTTP/1.1 426"), out[:80])
        out = raw_request(self.m, (base + "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:80])
        out = raw_request(self.m, (base + key + "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.assertIn(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", out)

    def test_slowloris_is_closed(self):
        s = tcp_connect(self.m, None)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        s.settimeout(6)
        try:
            while True:
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
                if time.monotonic() - t0 > 5:
                    break
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):  # SSLError: over TLS
            pass
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, 5, "a slow head was not cut off")
        s.close()
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)

    def test_garbage_after_upgrade_keeps_server_serving(self):
        s = raw_upgrade(self.m, auth=SECRET)
        s.sendall(os.urandom(4096))
        s.close()
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)

    def test_unidentified_connections_per_address(self):
        # 32 from one address at once (the default); the newcomer gets in and
        # the address's oldest goes (test_hardening covers the global cap)
        socks = []
        try:
            for _ in range(40):
                socks.append(socket.create_connection(("127.0.0.1", self.m.port)))
            time.sleep(0.3)  # well inside the 1.5 s head timeout
            closed = []
            for i, s in enumerate(socks):
                try:
                    data = s.recv(10, socket.MSG_DONTWAIT | socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if data == b"":
                    closed.append(i)
            self.assertEqual(closed, list(range(8)))
            self.assertEqual(http_get(self.m, "/healthz")[0], 200)
        finally:
            for s in socks:
                s.close()

    def test_peer_that_stops_reading_is_not_read_then_cut(self):
        # its acks pile up: MASTER stops reading its heartbeats until they
        # drain, so it times out (4001) instead of growing the queue
        mark = self.m.mark()
        # a small send buffer keeps loopback segments small: big ones overrun
        # MASTER's receive buffer while it is busy, and TCP's retransmit
        # backoff would then stall the flow for seconds
        s = raw_upgrade(self.m, rcvbuf=4096, sndbuf=32768, auth=SECRET)
        s.sendall(ws_frame(json.dumps({"o": 0, "d": info("slow-reader")}).encode()))
        hb = ws_frame(json.dumps({"o": 9, "d": {}}).encode()) * 1000
        s.settimeout(10)
        cut = False
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 30:
                s.sendall(hb)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):  # SSLError: over TLS
            cut = True
        except socket.timeout:
            pass
        s.close()
        self.assertTrue(cut, self.m.log())
        self.m.wait_log(r"\[slow-reader\] peer \S+ is not reading: \d+ bytes queued, reads paused",
                        5, mark)
        self.m.wait_log(r"\[slow-reader\] no heartbeat", 5, mark)
        self.assertEqual(self.m.count(r"outbound queue over"), 0)
        self.assertEqual(http_get(self.m, "/healthz")[0], 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
