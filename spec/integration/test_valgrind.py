"""MASTER under valgrind: a short life with CONTROLs, bad input and a stop
must end with no memory error, no leak and every handle closed (exit 0).
Skipped in the sanitizer build, where ASan plays this part.
"""
import asyncio
import os
import shutil
import signal
import unittest

import harness
from harness import Certs, Control, Master, http_get, raw_request, run, status

VALGRIND = shutil.which("valgrind")
VG = [VALGRIND, "--quiet", "--error-exitcode=97", "--leak-check=full",
      "--show-leak-kinds=definite,indirect,possible",
      "--errors-for-leak-kinds=definite,indirect,possible"]


@unittest.skipIf(os.environ.get("DCM_SANITIZED") == "1" or not VALGRIND,
                 "valgrind does not run beside ASan, or is missing")
class Valgrind(unittest.TestCase):

    def test_clean_exit_under_valgrind(self):
        real = harness.BIN
        vg = VG + [real]
        harness.BIN = vg[0]
        try:
            with Master(*vg[1:], "--shards", "4", "--expected-machines", "2",
                        "--collect-window", "30", "--heartbeat-interval", "1",
                        "--heartbeat-grace", "2", "--reconnect-grace", "0.5") as m:
                async def go():
                    a, b = Control(m, "a"), Control(m, "b")
                    await a.start()
                    await b.start()
                    await a.next_connect(20)
                    await b.next_connect(20)
                    await a.ws.send("not json")
                    await a.drop()
                    await b.next_connect(20)
                    await b.close()
                run(go())
                raw_request(m.port, b"GET /nope HTTP/1.1\r\n\r\n")
                self.assertEqual(status(m)["state"], "running")
                self.assertEqual(m.stop(60), 0)
        finally:
            harness.BIN = real

    def test_clean_exit_under_valgrind_with_etcd(self):
        """HA: leading, a CONTROL, stepping down when etcd stops answering, a
        fresh master following, then a stop: nothing left behind either."""
        from etcd_harness import Etcd
        real = harness.BIN
        vg = VG + [real]
        harness.BIN = vg[0]
        etcd = Etcd()
        try:
            with Master(*vg[1:], "--shards", "2", "--expected-machines", "1",
                        "--collect-window", "30", "--heartbeat-interval", "1",
                        "--etcd", etcd.url, "--lease-ttl", "2") as m:
                m.wait_log(r"elected leader", 30)
                async def go():
                    a = Control(m, "a")
                    for _ in range(100):  # refused as a follower until the records are read
                        try:
                            await a.start()
                            break
                        except Exception:
                            await asyncio.sleep(0.1)
                    await a.next_connect(20)
                    etcd.freeze()
                    self.assertEqual(await a.closed(20), 4020)
                run(go())
                m.wait_log(r"stepping down as leader", 20)
                mark = m.mark()
                etcd.thaw()
                m.wait_log(r"starting again as a follower", 20)
                m.wait_log(r"elected leader", 30, start=mark)
                self.assertEqual(m.stop(60), 0)
        finally:
            harness.BIN = real
            etcd.close()

    def test_clean_exit_under_valgrind_with_tls(self):
        """TLS sessions, a refused plaintext client, a failed handshake and a
        certificate reload leave nothing behind either."""
        real = harness.BIN
        vg = VG + [real]
        harness.BIN = vg[0]
        certs = Certs()
        try:
            pair = certs.issue()
            with Master(*vg[1:], "--shards", "2", "--expected-machines", "1",
                        "--collect-window", "30", "--heartbeat-interval", "1",
                        "--heartbeat-grace", "2", "--head-timeout", "5", tls=pair) as m:
                async def go():
                    a = Control(m, "a")
                    await a.start()
                    await a.next_connect(20)
                    await a.close()
                run(go())
                self.assertEqual(http_get(m.port, "/healthz", timeout=20)[0], 400)  # plaintext
                raw_request(m.port, b"\x16\x03\x01\x00\x05hello", timeout=20)  # not TLS
                m.signal(signal.SIGHUP)
                m.wait_log(r"TLS reloaded", 20)
                self.assertEqual(status(m)["state"], "running")
                self.assertEqual(m.stop(60), 0)
        finally:
            harness.BIN = real
            certs.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
