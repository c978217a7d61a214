"""The real agent over wss:// against the real MASTER: a small fleet connects,
fails over and shuts down with the token only ever inside TLS; agents that
cannot verify MASTER (no trust, another CA, a wrong host name, an expired
certificate, no TLS on the other side) log one clear line per attempt, retry,
and never fall back to plaintext. Certificates come from harness.Certs.
"""
import os
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from control_harness import (CONTROL_BIN, MASTER_FAST, Fleet, shards_by_machine,  # noqa: E402
                             status, wait_for, wait_running)
from harness import Certs  # noqa: E402

SECRET = "fleet-tls-Secret-90"
TOKEN = "Bot.fleet-tls.TOKEN"


class TlsFleet(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        self.certs = Certs()

    def tearDown(self):
        self.fleet.close()
        self.certs.close()

    def url(self, m, host="localhost"):
        return "wss://%s:%d" % (host, m.port)

    def test_connect_failover_shutdown_over_wss(self):
        f, ca = self.fleet, self.certs.ca
        m = f.master("--shards", "8", "--collect-window", "10", "--expected-machines", "2",
                     *MASTER_FAST, auth=SECRET, token=TOKEN, tls=self.certs.issue())
        a = f.agent(m.port, "t1", "--ca-file", ca, url=self.url(m), auth=SECRET)
        b = f.agent(m.port, "t2", "--ca-file", ca, url=self.url(m, "127.0.0.1"), auth=SECRET)
        wait_running(m)
        for x in (a, b):
            x.wait_log(r"ready: all", 10)
            x.wait_log(r"MASTER wss://")
        # the token reached every cluster, through TLS only
        tokens = {e.get("DISCORD_TOKEN") for e in f.envs().values()}
        self.assertEqual(tokens, {TOKEN})
        self.assertEqual(sorted(sum(shards_by_machine(m).values(), [])), list(range(8)))
        # failover: t1 dies, t2 gets its shards
        a.kill()
        wait_for(lambda: shards_by_machine(m).get("t2") == list(range(8)), 15,
                 "t2 to hold every shard")
        b.wait_log(r"connect: 8 shards", 10)
        # t1 comes back over wss:// and joins
        a2 = f.agent(m.port, "t1", "--ca-file", ca, url=self.url(m), auth=SECRET)
        wait_for(lambda: "t1" in shards_by_machine(m), 10, "t1 back")
        # shutdown: MASTER stops, the agents lose it; then they stop
        marks = {x: x.mark() for x in (a2, b)}
        self.assertEqual(m.stop(), 0)
        for x, mk in marks.items():
            x.wait_log(r"lost MASTER|no session with MASTER", 10, start=mk)
            x.signal(signal.SIGTERM)
            self.assertEqual(x.wait(15), 0, x.log())
        for proc in (m, a, a2, b):
            self.assertNotIn(TOKEN, proc.log())
            self.assertNotIn(SECRET, proc.log())
            self.assertNotIn("Sanitizer", proc.log())
        self.assertNotIn("plaintext HTTP", m.log())

    def test_agents_that_cannot_verify_master_never_downgrade(self):
        f = self.fleet
        localhost_only = self.certs.issue(sans=("DNS:localhost",))
        m = f.master("--shards", "2", "--collect-window", "30", *MASTER_FAST, auth=SECRET,
                     tls=localhost_only)
        other = Certs("another CA")
        try:
            cases = [
                (["--ca-file", other.ca], self.url(m),
                 r"certificate verify failed: unable to get local issuer certificate"),
                ([], self.url(m),  # the system store does not know the test CA
                 r"certificate verify failed: unable to get local issuer certificate"),
                (["--ca-file", self.certs.ca], self.url(m, "127.0.0.1"),
                 r"certificate verify failed: IP address mismatch"),
                ([], "ws://127.0.0.1:%d" % m.port,
                 r"HTTP 400 \(if MASTER serves TLS, use wss://\)"),
            ]
            agents = []
            for i, (args, url, _) in enumerate(cases):
                agents.append(f.agent(m.port, "bad-%d" % i, *args, url=url, auth=SECRET))
            for x, (_, url, want) in zip(agents, cases):
                first = x.wait_log(r"no session with MASTER \(.*" + want, 10)
                self.assertIn("retrying in", first)
                x.wait_log(r"no session with MASTER \(.*" + want, 10,
                           start=x.mark())  # retried, the same way
            self.assertEqual(m.count(r"identified from"), 0, m.log())
            # a good one still gets in
            good = f.agent(m.port, "good", "--ca-file", self.certs.ca, url=self.url(m),
                           auth=SECRET)
            good.wait_log(r"initialised: 2 shards", 10)
            self.assertEqual([x["id"] for x in status(m)["machines"]], ["good"])
        finally:
            other.close()

    def test_expired_certificate_and_plaintext_master(self):
        f = self.fleet
        expired = f.master("--shards", "2", *MASTER_FAST, auth=SECRET,
                           tls=self.certs.issue(expired=True))
        plain = f.master("--shards", "2", *MASTER_FAST, auth=SECRET)
        x = f.agent(expired.port, "exp", "--ca-file", self.certs.ca, url=self.url(expired),
                    auth=SECRET)
        y = f.agent(plain.port, "pl", "--ca-file", self.certs.ca, url=self.url(plain),
                    auth=SECRET)
        x.wait_log(r"TLS handshake with localhost:\d+ failed: certificate verify failed: "
                   r"certificate has expired", 10)
        y.wait_log(r"TLS handshake with localhost:\d+ failed: .*\(is MASTER serving TLS\?", 10)
        self.assertEqual(expired.count(r"identified from"), 0)
        self.assertEqual(plain.count(r"identified from"), 0)

    def test_a_silent_server_times_the_handshake_out(self):
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(8)  # accepts (the kernel does), never answers
            port = lsock.getsockname()[1]
            x = self.fleet.agent(port, "silent", "--ca-file", self.certs.ca,
                                 "--connect-timeout", "0.5", url="wss://localhost:%d" % port)
            x.wait_log(r"no session with MASTER \(timed out in the TLS handshake\)", 10)

    def test_bad_tls_usage(self):
        def usage(*args):
            return subprocess.run([CONTROL_BIN, "--cluster-command", "true", *args],
                                  capture_output=True, text=True, timeout=10)
        r = usage("--master", "ws://127.0.0.1:1", "--ca-file", self.certs.ca)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--ca-file", r.stderr)
        self.assertIn("only used with a wss:// --master", r.stderr)
        r = usage("--master", "wss://127.0.0.1:1", "--ca-file", "/nonexistent/ca.pem")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertIn("CA file: cannot load '/nonexistent/ca.pem'", r.stderr)
        r = usage("--master", "https://127.0.0.1:1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("must start with wss:// or ws://", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
