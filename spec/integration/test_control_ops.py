"""The agent for operators: GET /metrics on --metrics-port (curl, the strict
parser in prom.py), --log-format json wrapping the clusters' own stdout and
stderr lines with the cluster id, and a planned drain that logs at info on
both the agent and MASTER.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prom  # noqa: E402
from control_harness import (CONTROL_BIN, MASTER_FAST, Fleet, free_port, http_get,  # noqa: E402
                             wait_for, wait_running)
from harness import raw_request  # noqa: E402

# Talks on both streams (one line not UTF-8), asks to identify both its
# shards and waits; cluster 1 crashes once first (marker file).
TALKING_CLUSTER = r"""#!/bin/sh
if [ "$CLUSTER_ID" = 1 ] && [ ! -e "$TEST_DIR/crashed" ]; then
  touch "$TEST_DIR/crashed"
  echo "crashing on purpose $CLUSTER_ID" >&2
  exit 1
fi
echo "hello from cluster $CLUSTER_ID"
echo "oops from cluster $CLUSTER_ID" >&2
printf 'raw \377 byte from cluster %s\n' "$CLUSTER_ID" >&2
for s in $(echo "$SHARD_IDS" | tr , ' '); do
  curl -s -m 60 -o /dev/null "$DISCLUSTER_IDENTIFY_URL?shard=$s" &
done
echo READY
exec cat >/dev/null
"""

QUIET_CLUSTER = """#!/bin/sh
echo "up $CLUSTER_ID" >&2
echo READY
exec cat >/dev/null
"""


def json_lines(proc):
    """Every stderr line of proc, each parsed as JSON (fails on the first that is not)."""
    out = []
    for line in proc.log().split("\n"):
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError("not a JSON line: %r\nlog:\n%s" % (line, proc.log()))
    return out


def try_scrape(port):
    try:
        return prom.scrape(port)
    except subprocess.CalledProcessError:  # curl: the connection was closed unanswered
        return None


def metrics_port(agent):
    line = agent.wait_log(r"metrics on http", 10)
    return int(re.search(r"127\.0\.0\.1:(\d+)", json.loads(line)["msg"]).group(1))


class ControlOps(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()

    def tearDown(self):
        self.fleet.close()

    def test_metrics_and_json_logs(self):
        f = self.fleet
        f.script("talk", TALKING_CLUSTER)
        # a long identify interval: one grant, the other requests wait
        m = f.master("--shards", "4", "--expected-machines", "1", "--identify-interval", "60",
                     *MASTER_FAST)
        a = f.agent(m.port, "a", "--shards-per-cluster", "2", "--metrics-port", "0",
                    "--log-format", "json", command=os.path.join(f.dir, "talk"))
        port = metrics_port(a)
        wait_running(m)

        def settled():
            fams = prom.scrape(port)
            ok = (prom.value(fams, "discluster_control_clusters", state="ready") == 2 and
                  prom.value(fams, "discluster_control_identify_waiting") == 3)
            return fams if ok else None
        fams = wait_for(settled, 20, "2 clusters ready and 3 identifies waiting")
        self.assertEqual(prom.value(fams, "discluster_control_connected"), 1)
        self.assertEqual(prom.value(fams, "discluster_control_draining"), 0)
        self.assertEqual(prom.value(fams, "discluster_control_cluster_restarts_total"), 1)
        self.assertEqual(prom.value(fams, "discluster_control_shards_assigned"), 4)
        self.assertEqual(prom.value(fams, "discluster_control_shards_over_cap"), 0)
        self.assertEqual(sum(v for _, v in prom.series(fams, "discluster_control_clusters")), 2)
        self.assertEqual(prom.value(fams, "discluster_control_build_info", version="0.1.0",
                                    protocol="1"), 1)
        # only GET /metrics
        self.assertEqual(prom.curl(port, method="POST")[0], 405)
        self.assertEqual(prom.curl(port, "/")[0], 404)
        self.assertEqual(http_get(port, "/metrics?x=1")[0], 200)

        # every line of the agent's stderr is JSON; the clusters' lines carry their id
        def cluster_lines():
            return [x for x in json_lines(a) if "stream" in x]
        wait_for(lambda: len(cluster_lines()) >= 7, 10, "the clusters' output lines")
        lines = cluster_lines()
        for x in lines:
            self.assertEqual(x["level"], "info", x)
            self.assertEqual(x["machine"], "a", x)
            self.assertIsInstance(x["cluster"], int, x)
            self.assertIn(x["stream"], ("stdout", "stderr"), x)
            self.assertIn(" %d" % x["cluster"], x["msg"], x)  # each names its own id
        got = {(x["cluster"], x["stream"], x["msg"]) for x in lines}
        for c in (0, 1):
            self.assertIn((c, "stdout", "hello from cluster %d" % c), got)
            self.assertIn((c, "stderr", "oops from cluster %d" % c), got)
            self.assertIn((c, "stderr", "raw ? byte from cluster %d" % c), got)
        self.assertIn((1, "stderr", "crashing on purpose 1"), got)
        self.assertFalse(any("READY" in x["msg"] for x in lines))  # protocol lines are not copied

        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(20), 0)
        json_lines(a)  # to the last line
        m.stop()

    def test_a_planned_drain_logs_at_info(self):
        f = self.fleet
        f.script("quiet", QUIET_CLUSTER)
        m = f.master("--shards", "4", "--expected-machines", "2", "--log-format", "json",
                     *MASTER_FAST)
        cmd = os.path.join(f.dir, "quiet")
        a = f.agent(m.port, "a", "--log-format", "json", "--metrics-port", "0", command=cmd)
        b = f.agent(m.port, "b", "--log-format", "json", command=cmd)
        port = metrics_port(a)
        wait_running(m)
        wait_for(lambda: prom.value(prom.scrape(port), "discluster_control_clusters",
                                    state="ready") >= 1, 10, "a's clusters ready")
        am, mm = a.mark(), m.mark()
        a.signal(signal.SIGTERM)
        self.assertEqual(a.wait(20), 0)
        m.wait_log(r"left after its drain", 5, mm)
        wait_for(lambda: sorted(wait_running(m)["machines"][0]["shards"]) == [0, 1, 2, 3], 10,
                 "every shard on b")
        after_a = json_lines(a)[am:]
        after_m = [x for x in json_lines(m)[mm:] if x.get("machine") == "a"]
        self.assertTrue(any("offloading" in x["msg"] for x in after_a), after_a)
        self.assertTrue(any("offload: moving" in x["msg"] for x in after_m), after_m)
        for x in after_a + after_m:
            self.assertIn(x["level"], ("debug", "info"), x)
        self.assertFalse(any("failed" in x["msg"] for x in after_m), after_m)
        m.stop()
        b.kill()

    def test_metrics_port_bad_inputs(self):
        f = self.fleet
        base = [CONTROL_BIN, "--master", "ws://127.0.0.1:%d" % free_port(), "--id", "a",
                "--cluster-command", "true"]
        for bad in ("abc", "-1", "65536", ""):
            r = subprocess.run(base + ["--metrics-port", bad], capture_output=True, text=True,
                               timeout=10)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("--metrics-port", r.stderr)
        with socket.socket() as s:  # a port in use is an error at start
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            taken = s.getsockname()[1]
            a = f.agent(free_port(), "a", "--metrics-port", str(taken))
            self.assertEqual(a.wait(10), 1)
            self.assertIn("cannot listen on 127.0.0.1:%d for GET /metrics" % taken, a.log())

        # an agent with no MASTER to talk to still answers, and survives bad requests
        b = f.agent(free_port(), "b", "--metrics-port", "0", "--log-format", "json")
        port = metrics_port(b)
        self.assertTrue(raw_request(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 "))
        big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
        self.assertTrue(raw_request(port, big).startswith(b"HTTP/1.1 431 "))
        self.assertTrue(raw_request(port, b"GET /metrics HTTP/2.0\r\n\r\n").startswith(
            b"HTTP/1.1 400 "))
        # 16 connections at most: the ones beyond are closed at once
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
        try:
            wait_for(lambda: raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n") == b"", 5,
                     "a connection over the bound closed unanswered")
        finally:
            for c in idle:
                c.close()
        fams = wait_for(lambda: try_scrape(port), 5, "a scrape once the idle ones are gone")
        self.assertEqual(prom.value(fams, "discluster_control_connected"), 0)
        self.assertEqual(sum(v for _, v in prom.series(fams, "discluster_control_clusters")), 0)
        b.signal(signal.SIGTERM)
        self.assertEqual(b.wait(10), 0)
        json_lines(b)


if __name__ == "__main__":
    unittest.main(verbosity=2)
