"""GET /metrics on MASTER, fetched with curl and read with the strict parser
in prom.py: the page follows a fleet (scripted CONTROLs, python3-websockets)
through identify grants, a drain with handed sessions, a failover, a
rebalance and policy reloads; the identify queue and budget; the secret;
bad requests. The figures are checked against /status where both show them.
"""
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import prom  # noqa: E402
from control_harness import wait_for  # noqa: E402
from fake_discord import FakeDiscord  # noqa: E402
from harness import BIN, OP_CONNECT, OP_OFFLOAD, Control, Master, run, send, status  # noqa: E402

TOKEN = "fake.bot.TOKEN-for-metrics-tests"
SECRET = "metrics-test-secret"
AUTH = {"Authorization": "Bearer " + SECRET}
TIMING = ["--heartbeat-interval", "1", "--heartbeat-grace", "1", "--handshake-timeout", "2",
          "--collect-window", "30", "--reconnect-grace", "0.3"]


class Parser(unittest.TestCase):
    """The parser itself is strict: each of these pages is refused."""

    def test_rejects_malformed_pages(self):
        good = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
        prom.parse(good)
        bad = [
            "a_total 1\n",                                               # no TYPE
            "# HELP a_total A.\n# TYPE a_total counter\na_total 1",      # no final newline
            "# HELP a A.\n# TYPE a counter\na 1\n",                      # counter without _total
            "# HELP a A.\n# TYPE a gauge\na one\n",                      # not a number
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",  # duplicate series
            "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n",             # bad escape
            "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",                   # unquoted value
            "# HELP a A.\n# TYPE a gauge\na 1 1700000000\n",             # timestamp
            "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\nb 1\na 1\n",  # split
            "# HELP a A.\n# TYPE a histogram\na 1\n",                    # unknown type
            "# TYPE a gauge\na 1\n",                                     # no HELP
            "# a comment\n",                                             # other comment
        ]
        for page in bad:
            with self.assertRaises(ValueError, msg=page):
                prom.parse(page)
        fams = prom.parse('# HELP g G.\n# TYPE g gauge\ng{m="a\\"b\\\\c\\nd"} 2.5\n')
        self.assertEqual(prom.value(fams, "g", m='a"b\\c\nd'), 2.5)


class Metrics(unittest.TestCase):

    def setUp(self):
        fd, self.policy = tempfile.mkstemp(suffix=".lua")
        os.close(fd)
        self.write("return {}\n")  # the default policy's decisions

    def tearDown(self):
        os.unlink(self.policy)

    def write(self, text):
        with open(self.policy + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.policy + ".tmp", self.policy)

    def check_against_status(self, m, fams):
        """The machine gauges and shard counts agree with /status."""
        st = status(m, AUTH)
        want = {}
        for x in st["machines"]:
            key = (x["state"], x["role"])
            want[key] = want.get(key, 0) + 1
        for labels, v in prom.series(fams, "discluster_machines"):
            self.assertEqual(v, want.get((labels["state"], labels["role"]), 0), (labels, st))
        self.assertEqual(prom.value(fams, "discluster_shards_unassigned"), len(st["unassigned"]))
        self.assertEqual(prom.value(fams, "discluster_shards_assigned"),
                         st["shard_count"] - len(st["unassigned"]))
        live = sorted(x["id"] for x in st["machines"] if "last_heartbeat_age_ms" in x)
        ages = prom.series(fams, "discluster_machine_heartbeat_age_seconds")
        self.assertEqual(sorted(labels["machine"] for labels, _ in ages), live)
        for _, age in ages:  # heartbeats every 0.5 s; the loop's clock
            self.assertTrue(0 <= age < 2.5, ages)
        self.assertEqual(prom.value(fams, "discluster_identify_grants_total"),
                         st["identify"]["granted"])
        self.assertEqual(prom.value(fams, "discluster_identify_returned_total"),
                         st["identify"]["returned"])
        self.assertEqual(prom.value(fams, "discluster_session_start_limit_remaining"),
                         st["session_start_limit"]["remaining"])
        return st

    def test_a_fleet_life_in_counters(self):
        with FakeDiscord("200:shards=4:max_concurrency=2:remaining=900:total=1000",
                         token=TOKEN) as fd:
            with Master("--api-base", fd.base_url, "--expected-machines", "3",
                        "--identify-interval", "0.05", "--policy", self.policy, *TIMING,
                        token=TOKEN, auth=SECRET) as m:
                m.wait_log(r"state fetching -> collecting")
                fams = prom.scrape(m.port, SECRET)
                version = subprocess.run([BIN, "--version"], capture_output=True, text=True,
                                         check=True).stdout.split()[1]
                self.assertEqual(prom.value(fams, "discluster_build_info", version=version,
                                            protocol="1"), 1)
                self.assertEqual(prom.value(fams, "discluster_state", state="collecting"), 1)
                self.assertEqual(sum(v for _, v in prom.series(fams, "discluster_state")), 1)
                self.assertEqual(prom.value(fams, "discluster_shard_count"), 4)
                self.assertEqual(prom.value(fams, "discluster_session_start_limit_total"), 1000)
                self.assertEqual(prom.value(fams, "discluster_session_start_limit_remaining"), 900)
                # the scrape itself is the one connection reading its head
                self.assertEqual(prom.value(fams, "discluster_connections", phase="http"), 1)
                self.assertEqual(prom.value(fams, "discluster_connections", phase="active"), 0)
                sent0 = prom.value(fams, "discluster_sent_bytes_total")

                async def go():
                    a = Control(m, "a", identify_queue=True, handoff=True, headers=AUTH)
                    b = Control(m, "b", identify_queue=True, handoff=True, headers=AUTH)
                    c = Control(m, "c", identify_queue=True, standby=True, headers=AUTH)
                    for x in (a, b, c):
                        await x.start()
                    sa = (await a.next_connect())["shards"]
                    sb = (await b.next_connect())["shards"]
                    await c.next_connect()
                    self.assertEqual(sorted(sa + sb), [0, 1, 2, 3])

                    # identify grants, one given back
                    await a.identify(*sa)
                    for _ in sa:
                        await a.next_grant(5)
                    await a.release(sa[0])
                    fams = wait_for(lambda: (lambda f: f if prom.value(
                        f, "discluster_identify_returned_total") == 1 else None)(
                            prom.scrape(m.port, SECRET)), 5, "the returned grant")
                    self.assertEqual(prom.value(fams, "discluster_identify_grants_total"),
                                     len(sa))
                    self.assertEqual(prom.value(fams, "discluster_session_start_limit_remaining"),
                                     900 - len(sa) + 1)
                    self.assertEqual(prom.value(fams, "discluster_connections", phase="active"),
                                     3)
                    self.assertEqual(prom.value(fams, "discluster_policy_calls_total"), 1)
                    self.assertGreater(prom.value(fams, "discluster_received_packets_total"), 6)
                    self.assertGreater(prom.value(fams, "discluster_sent_packets_total"), 6)
                    self.assertGreater(prom.value(fams, "discluster_sent_bytes_total"), sent0)
                    self.check_against_status(m, fams)

                    # a drain: a stops first, then its shards move with their sessions
                    await a.sessions([(s, "sid%d" % s, 10 + s, "wss://gw.example/resume")
                                      for s in sa])
                    seen = {x: len(x.ops(OP_CONNECT)) for x in (b, c)}
                    await send(a.ws, OP_OFFLOAD, {})
                    self.assertEqual((await a.next_connect())["shards"], [])
                    await a.stopped(sa)

                    def handed():  # sessions in the receivers' connects since the offload
                        return sum(len(p["d"].get("sessions") or [])
                                   for x in (b, c) for p in x.ops(OP_CONNECT)[seen[x]:])
                    for _ in range(100):
                        if handed() >= len(sa):
                            break
                        await asyncio.sleep(0.05)
                    self.assertEqual(handed(), len(sa))
                    fams = prom.scrape(m.port, SECRET)
                    self.assertEqual(prom.value(fams, "discluster_drains_total"), 1)
                    self.assertEqual(prom.value(fams, "discluster_machines_draining"), 1)
                    self.assertEqual(prom.value(fams, "discluster_resumes_handed_total"),
                                     len(sa))
                    await a.close()  # a finished drain is no failure
                    m.wait_log(r"\[a\] left after its drain", 5)

                    # a failover: c vanishes and the grace runs out
                    await c.drop()
                    m.wait_log(r"\[c\] failed: no reconnect", 5)
                    fams = wait_for(lambda: (lambda f: f if prom.value(
                        f, "discluster_shards_unassigned") == 0 else None)(
                            prom.scrape(m.port, SECRET)), 5, "c's shards placed on b")
                    self.assertEqual(prom.value(fams, "discluster_failovers_total"), 1)
                    self.assertEqual(prom.value(fams, "discluster_drains_total"), 1)
                    self.assertEqual(prom.value(fams, "discluster_machines_draining"), 0)
                    self.assertGreaterEqual(prom.value(fams, "discluster_policy_calls_total"), 2)
                    st = self.check_against_status(m, fams)
                    self.assertEqual([x["id"] for x in st["machines"]], ["b"])
                    self.assertEqual(prom.value(fams, "discluster_machines", state="live",
                                                role="active"), 1)

                    # a rebalance (b alone: nothing moves, the counter still counts it)
                    out = subprocess.run(["curl", "-sS", "-X", "POST", "-H",
                                          "Authorization: Bearer " + SECRET,
                                          "http://127.0.0.1:%d/rebalance" % m.port],
                                         capture_output=True, text=True, timeout=20)
                    self.assertIn("rebalance started", out.stdout)
                    fams = prom.scrape(m.port, SECRET)
                    self.assertEqual(prom.value(fams, "discluster_rebalances_total"), 1)
                    await b.close()
                run(go())

                # policy reloads: one good, one broken (the running policy stays)
                mark = m.mark()
                m.signal(signal.SIGHUP)
                m.wait_log(r"policy reloaded from", 5, mark)
                self.write("return { allocate = function( }")
                m.signal(signal.SIGHUP)
                m.wait_log(r"reload failed", 5, mark)
                fams = prom.scrape(m.port, SECRET)
                self.assertEqual(prom.value(fams, "discluster_policy_reloads_total"), 1)
                self.assertEqual(prom.value(fams, "discluster_policy_reload_failures_total"), 1)
                self.assertEqual(prom.value(fams, "discluster_policy_errors_total"), 0)
                self.assertNotIn(SECRET, prom.curl(m.port, auth=SECRET)[2])
                self.assertNotIn(TOKEN, prom.curl(m.port, auth=SECRET)[2])
                log = m.log()
                self.assertNotRegex(log, r"\[a\] failed")
                self.assertEqual(m.stop(), 0)

    def test_identify_queue_depth_and_budget(self):
        # remaining 12 with the default reserve of 10: two grants, then blocked
        with FakeDiscord("200:shards=4:max_concurrency=2:remaining=12:total=1000:"
                         "reset_after=600000", token=TOKEN) as fd:
            with Master("--api-base", fd.base_url, "--expected-machines", "1",
                        "--identify-interval", "0.05", *TIMING, token=TOKEN) as m:
                async def go():
                    a = Control(m, "a", identify_queue=True)
                    await a.start()
                    self.assertEqual((await a.next_connect())["shards"], [0, 1, 2, 3])
                    fams = prom.scrape(m.port)
                    self.assertEqual(prom.series(fams, "discluster_identify_queue_depth"), [])
                    self.assertEqual(prom.value(fams, "discluster_identify_blocked"), 0)
                    await a.identify(0, 1, 2, 3)
                    await a.next_grant()
                    await a.next_grant()
                    await a.no_grant(0.3)
                    fams = wait_for(lambda: (lambda f: f if prom.value(
                        f, "discluster_identify_waiting") == 2 else None)(prom.scrape(m.port)),
                        5, "two requests waiting")
                    self.assertEqual(prom.value(fams, "discluster_identify_blocked"), 1)
                    self.assertEqual(prom.value(fams, "discluster_identify_grants_total"), 2)
                    self.assertEqual(prom.value(fams, "discluster_session_start_limit_remaining"),
                                     10)
                    self.assertEqual(sorted((d["bucket"], v) for d, v in prom.series(
                        fams, "discluster_identify_queue_depth")), [("0", 1), ("1", 1)])
                    await a.close()
                run(go())
                self.assertEqual(m.stop(), 0)

    def test_secret_and_bad_requests(self):
        with Master("--shards", "2", *TIMING, auth=SECRET) as m:
            for auth in (None, "wrong-secret"):
                code, headers, body = prom.curl(m.port, auth=auth)
                self.assertEqual(code, 401, body)
                self.assertEqual(headers.get("www-authenticate"), "Bearer")
                self.assertNotIn("discluster_", body)
            code, headers, _ = prom.curl(m.port, auth=SECRET, method="POST")
            self.assertEqual(code, 405)
            self.assertEqual(headers.get("allow"), "GET")
            self.assertEqual(prom.curl(m.port, "/metricsx", auth=SECRET)[0], 404)
            self.assertEqual(prom.curl(m.port, "/metrics/", auth=SECRET)[0], 404)
            code, _, body = prom.curl(m.port, "/metrics?name[]=x", auth=SECRET)
            self.assertEqual(code, 200)
            prom.parse(body)
            # still serving after all of it
            fams = prom.scrape(m.port, SECRET)
            self.assertEqual(prom.value(fams, "discluster_shard_count"), 2)
            self.assertNotIn("discluster_session_start_limit_total", fams)  # no Discord
            self.assertEqual(m.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
