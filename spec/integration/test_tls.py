"""TLS on MASTER's port and the separate credentials.

A CA and certificates are made at test time with the openssl command
(harness.Certs). The clients are independent: python3-websockets, Python's
ssl module, urllib and curl. Every refusal (wrong CA, wrong host name,
expired certificate, plaintext on the TLS port, an old protocol, bytes that
are not TLS, a stalled handshake) is clear to the client and leaves MASTER
serving the others. A certificate rotated by SIGHUP is what the next client
gets; a bad pair keeps the old one. The read-only secret reads /status and
nothing more.
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import unittest
import warnings

import websockets

from harness import (BIN, OP_ACK, OP_HEARTBEAT, Certs, Master, connect, hello, http_get,
                     recv_op, run, send)

SECRET = "tls-control-Secret-41"
STATUS = "tls-status-Secret-73"
TOKEN = "Bot.tls.TOKEN-never-logged"
ARGS = ["--shards", "4", "--collect-window", "600", "--head-timeout", "1.5",
        "--handshake-timeout", "3", "--heartbeat-interval", "1", "--heartbeat-grace", "5",
        "--log-level", "debug"]


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True,
                       text=True, timeout=15)
    return r.returncode, r.stdout, r.stderr


def tls_socket(port, ctx, host="localhost", timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(s, server_hostname=host)
    except Exception:
        s.close()
        raise


def closed_within(s, timeout):
    """Seconds until the peer closes s (None if it did not)."""
    t0 = time.monotonic()
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
    except socket.timeout:
        return None
    except OSError:
        pass
    return time.monotonic() - t0


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = Certs()
        cls.pair = cls.certs.issue()
        cls.m = Master(*ARGS, token=TOKEN, auth=SECRET, status_auth=STATUS, tls=cls.pair)
        cls.ctx = cls.pair[2]

    @classmethod
    def tearDownClass(cls):
        rc = cls.m.stop()
        log = cls.m.log()
        cls.m.__exit__()
        cls.certs.close()
        assert rc == 0, log
        for secret in (SECRET, STATUS, TOKEN):
            assert secret not in log, "a secret leaked into the log"

    def serving(self):
        """MASTER still serves a verifying client."""
        self.assertEqual(http_get(self.m, "/healthz")[:2], (200, "ok\n"))

    def url(self, path, host="localhost"):
        return "https://%s:%d%s" % (host, self.m.port, path)


class Clients(Base):

    def test_websockets_client_gets_initialise_over_wss(self):
        async def go():
            ws, init = await hello(self.m, "wss-1", {"Authorization": SECRET})
            self.assertEqual(init["d"]["token"], TOKEN)
            await send(ws, OP_HEARTBEAT, {})
            self.assertEqual((await recv_op(ws, OP_ACK))["d"], {"o": OP_HEARTBEAT})
            await ws.close()
            self.assertEqual(ws.close_code, 1000)
        run(go())
        line = self.m.wait_log(r"\[wss-1\] identified from")
        self.assertNotIn(TOKEN, line)

    def test_curl_over_https(self):
        ca = self.certs.ca
        rc, out, err = curl("--cacert", ca, self.url("/healthz"))
        self.assertEqual((rc, out), (0, "ok\n"), err)
        rc, out, err = curl("--cacert", ca, "-H", "Authorization: " + SECRET, self.url("/status"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["shard_count"], 4)
        # TLS 1.2 and 1.3 are both served
        for v in ("--tls-max", "1.2"), ("--tlsv1.3",):
            rc, out, err = curl("--cacert", ca, *v, self.url("/healthz"))
            self.assertEqual((rc, out), (0, "ok\n"), (v, err))

    def test_old_protocol_versions_are_refused(self):
        ctx = self.certs.client()
        with warnings.catch_warnings():  # deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        mark = self.m.mark()
        with self.assertRaises(ssl.SSLError):
            tls_socket(self.m.port, ctx).close()
        self.m.wait_log(r"TLS handshake failed: (unsupported protocol|no protocols available)",
                        5, mark)
        self.serving()

    def test_plaintext_clients_get_a_clear_refusal(self):
        status, body, _ = http_get(self.m.port, "/healthz")  # http:// on the TLS port
        self.assertEqual(status, 400)
        self.assertEqual(body, "this port speaks TLS: use https:// or wss://\n")
        rc, out, err = curl("http://127.0.0.1:%d/status" % self.m.port)
        self.assertEqual((rc, out), (0, body), err)

        async def go():
            with self.assertRaises(websockets.InvalidStatusCode) as cm:
                await websockets.connect("ws://127.0.0.1:%d/" % self.m.port, open_timeout=5,
                                         extra_headers={"Authorization": SECRET})
            self.assertEqual(cm.exception.status_code, 400)
        run(go())
        self.m.wait_log(r"plaintext HTTP on the TLS port, answered 400")
        self.serving()

    def test_wrong_ca_is_refused_by_the_client(self):
        other = Certs("another CA")
        try:
            mark = self.m.mark()
            with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                tls_socket(self.m.port, other.client())
            self.assertIn("unable to get local issuer certificate", str(cm.exception))
            rc, _, err = curl("--cacert", other.ca, self.url("/healthz"))
            self.assertEqual(rc, 60, err)  # peer certificate cannot be authenticated
            self.m.wait_log(r"TLS handshake failed: .*unknown ca", 5, mark)
            self.serving()
        finally:
            other.close()

    def test_wrong_host_name_is_refused_by_the_client(self):
        with self.assertRaises(ssl.SSLCertVerificationError) as cm:
            tls_socket(self.m.port, self.ctx, host="wrong.example")
        self.assertIn("Hostname mismatch", str(cm.exception))
        rc, _, err = curl("--cacert", self.certs.ca, "--resolve",
                          "wrong.example:%d:127.0.0.1" % self.m.port,
                          "https://wrong.example:%d/healthz" % self.m.port)
        self.assertEqual(rc, 60, err)
        self.serving()


class Credentials(Base):

    def test_read_only_secret_reads_status_only(self):
        for value in (STATUS, "Bearer " + STATUS, SECRET, "Bearer " + SECRET):
            status, body, _ = http_get(self.m, "/status", {"Authorization": value})
            self.assertEqual(status, 200, value[:12])
            self.assertNotIn(STATUS, body)
        for value in (None, "wrong", STATUS + "x", "Bearer " + STATUS[:-1]):
            headers = {"Authorization": value} if value else None
            self.assertEqual(http_get(self.m, "/status", headers)[0], 401)

        mark = self.m.mark()

        async def go():
            for value in (STATUS, "Bearer " + STATUS):  # never a CONTROL session
                with self.assertRaises(websockets.InvalidStatusCode) as cm:
                    await connect(self.m, {"Authorization": value})
                self.assertEqual(cm.exception.status_code, 403)
            ws, init = await hello(self.m, "cred-1", {"Authorization": "Bearer " + SECRET})
            self.assertEqual(init["d"]["token"], TOKEN)
            await ws.close()
        run(go())
        self.m.wait_log(r"upgrade refused: the read-only status secret does not allow it", 5,
                        mark)
        # nor a rebalance
        status, _, _ = http_get(self.m, "/rebalance", {"Authorization": STATUS}, method="POST")
        self.assertEqual(status, 403)
        status, _, _ = http_get(self.m, "/rebalance", {"Authorization": "nope"}, method="POST")
        self.assertEqual(status, 401)
        status, body, _ = http_get(self.m, "/rebalance", {"Authorization": SECRET}, method="POST")
        self.assertEqual((status, body), (409, "not running yet\n"))

    def test_rebalance_command_over_https(self):
        def rebalance(secret, *args):
            env = {k: v for k, v in os.environ.items() if k != "DISCLUSTER_AUTH"}
            env["DISCLUSTER_AUTH"] = secret
            return subprocess.run([BIN, "rebalance", "--master",
                                   "https://localhost:%d" % self.m.port, *args],
                                  capture_output=True, text=True, env=env, timeout=20)
        r = rebalance(SECRET, "--ca-file", self.certs.ca)  # reached MASTER: not running yet
        self.assertEqual((r.returncode, r.stdout), (1, "not running yet\n"), r.stderr)
        self.assertIn("MASTER answered HTTP 409", r.stderr)
        r = rebalance(STATUS, "--ca-file", self.certs.ca)
        self.assertIn("MASTER answered HTTP 403", r.stderr)
        r = rebalance(SECRET)  # the system store does not know the test CA
        self.assertEqual(r.returncode, 1)
        self.assertIn("SSL", r.stderr)
        self.assertNotIn(SECRET, r.stderr + r.stdout)


class Handshakes(Base):
    """The head timeout covers the TLS handshake; bytes that are not TLS end it."""

    def test_silent_and_stalled_handshakes_are_cut(self):
        mark = self.m.mark()
        silent = socket.create_connection(("127.0.0.1", self.m.port))
        stalled = socket.create_connection(("127.0.0.1", self.m.port))
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes
        for s in (silent, stalled):
            took = closed_within(s, 6)
            self.assertIsNotNone(took, "a stalled handshake was not cut")
            self.assertLess(took, 5)
            s.close()
        # the log line may reach the reader thread just after the close: wait for it
        self.m.wait_log(r"no complete TLS handshake within 1\.5s", start=mark)
        self.serving()

    def test_bytes_that_are_not_tls(self):
        mark = self.m.mark()
        for junk in (os.urandom(2048), b"\x00" * 64, b"\x16\x03\x03\xff\xff" + b"x" * 100):
            s = socket.create_connection(("127.0.0.1", self.m.port))
            s.sendall(junk)
            self.assertIsNotNone(closed_within(s, 5))
            s.close()
        self.m.wait_log(r"TLS handshake failed: ", 5, mark)
        self.serving()

    def test_garbage_records_after_the_handshake(self):
        s = tls_socket(self.m.port, self.ctx)
        s.sendall(("GET /healthz HTTP/1.1\r\nHost: x\r\n").encode())  # half a head
        mark = self.m.mark()
        os.write(s.fileno(), b"\x17\x03\x03\x00\x20" + os.urandom(32))  # a forged record
        self.assertIsNotNone(closed_within(s, 5))
        s.close()
        self.m.wait_log(r"TLS error: .*closing", 5, mark)
        self.serving()


class Rotation(unittest.TestCase):
    """SIGHUP reloads the pair; the next client gets the new certificate."""

    def test_rotation_and_a_bad_pair(self):
        certs = Certs()
        try:
            old_cert, old_key, ctx = certs.issue("first")
            new_cert, new_key, _ = certs.issue("rotated")
            cert, key = os.path.join(certs.dir, "live.pem"), os.path.join(certs.dir, "live.key")
            shutil.copy(old_cert, cert)
            shutil.copy(old_key, key)
            with Master(*ARGS, auth=SECRET, tls=(cert, key, ctx)) as m:
                def served():
                    s = tls_socket(m.port, ctx)
                    der = s.getpeercert(binary_form=True)
                    s.close()
                    return der
                der = {}
                for p in (old_cert, new_cert):
                    with open(p) as f:
                        der[p] = ssl.PEM_cert_to_DER_cert(f.read())
                self.assertEqual(served(), der[old_cert])

                async def go():
                    ws, _ = await hello(m, "before-rotation", {"Authorization": SECRET})
                    shutil.copy(new_cert, cert)
                    shutil.copy(new_key, key)
                    mark = m.mark()
                    m.signal(signal.SIGHUP)
                    m.wait_log(r"TLS reloaded: certificate /CN=rotated, valid until", 5, mark)
                    self.assertEqual(served(), der[new_cert])
                    # the session opened before keeps its TLS
                    await send(ws, OP_HEARTBEAT, {})
                    self.assertEqual((await recv_op(ws, OP_ACK))["o"], OP_ACK)
                    # a bad pair: the old certificate with the new key, then junk
                    for bad_cert, want in ((old_cert, "is not the key of the certificate"),
                                           (None, "tls_cert: cannot load")):
                        if bad_cert:
                            shutil.copy(bad_cert, cert)
                        else:
                            with open(cert, "w") as f:
                                f.write("junk\n")
                        mark = m.mark()
                        m.signal(signal.SIGHUP)
                        line = m.wait_log(r"TLS reload failed", 5, mark)
                        self.assertIn("the previous certificate stays", line)
                        self.assertIn(want, line)
                        m.wait_log(r"policy reloaded", 5, mark)
                        self.assertEqual(m.count(r"TLS reload"), 1 + (2 if bad_cert is None else 1))
                        self.assertEqual(served(), der[new_cert])
                    await send(ws, OP_HEARTBEAT, {})
                    self.assertEqual((await recv_op(ws, OP_ACK))["o"], OP_ACK)
                    await ws.close()
                run(go())
                self.assertEqual(m.stop(), 0)
        finally:
            certs.close()


class BadCertificates(unittest.TestCase):
    """An expired certificate, and one for another host: clients refuse, MASTER serves on."""

    def test_expired_and_wrong_host_certificates(self):
        certs = Certs()
        try:
            expired = certs.issue(expired=True)
            other = certs.issue("other.example", sans=("DNS:other.example",))
            with Master(*ARGS, auth=SECRET, tls=expired) as m:
                m.wait_log(r"the certificate is expired or not yet valid")
                with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                    tls_socket(m.port, expired[2])
                self.assertIn("certificate has expired", str(cm.exception))
                rc, _, err = curl("--cacert", certs.ca, "https://localhost:%d/healthz" % m.port)
                self.assertEqual(rc, 60, err)
                rc, out, err = curl("-k", "https://localhost:%d/healthz" % m.port)
                self.assertEqual((rc, out), (0, "ok\n"), err)  # serving, to who accepts it
                self.assertEqual(m.stop(), 0)
            with Master(*ARGS, auth=SECRET, tls=other) as m:
                with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                    tls_socket(m.port, other[2])
                self.assertIn("mismatch", str(cm.exception))
                s = tls_socket(m.port, other[2], host="other.example")
                s.close()
                self.assertEqual(m.stop(), 0)
        finally:
            certs.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
