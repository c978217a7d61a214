"""MASTER high availability on a real etcd: two MASTERs, three agents and the
reference cluster against the fake Discord. A leader change moves no shard
and starts no session; a paused leader steps down and never sends `connect`
again; etcd unavailable at start, or lost while leading, is survived.
Every fleet test asserts Discord's side as the other fleet tests do: no
INVALID_SESSION, at most one open session per shard, the identifies expected.
"""
import json
import os
import re
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from control_harness import MASTER_FAST, free_port, http_get, status, wait_for  # noqa: E402
from etcd_harness import Etcd  # noqa: E402
from fake_gateway import FakeGateway  # noqa: E402
from test_fleet_identify import (CLUSTER, GW_INTERVAL, MASTER_INTERVAL, TOKEN,  # noqa: E402
                                 FleetCase)

TTL = 2.0  # the lease: a dead leader is replaced after this


def role(m):
    """(role, leader URL) from /healthz, or (None, None) when it does not answer."""
    try:
        code, body = http_get(m.port, "/healthz", timeout=2)[:2]
    except OSError:
        return None, None
    if code != 200:
        return None, None
    d = json.loads(body)
    return d["role"], d["leader"]


def raw_upgrade_reply(port):
    """The full HTTP answer to a WebSocket upgrade (no secret: --no-auth)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    out = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        out += b
    s.close()
    return out.decode()


class HA(FleetCase):

    def setUp(self):
        super().setUp()
        self.etcd = Etcd()

    def tearDown(self):
        logs = [m.log() for m in self.fleet.masters]
        super().tearDown()
        self.etcd.close()
        for log in logs:  # stepping down and starting again under ASan/UBSan
            for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                self.assertNotIn(bad, log)

    def master(self, *extra, etcd=None):
        return self.fleet.master("--api-base", self.gw.api_base, "--expected-machines", "3",
                                 "--collect-window", "20", *MASTER_FAST,
                                 "--identify-interval", MASTER_INTERVAL,
                                 "--etcd", etcd or self.etcd.url, "--lease-ttl", str(TTL),
                                 "--cluster", "bot", *extra, token=TOKEN)

    def start(self, shards=24, mc=4, machines=3):
        self.gw = FakeGateway(token=TOKEN, shards=shards, max_concurrency=mc,
                              identify_interval=GW_INTERVAL, remaining=1000,
                              dispatch_interval=0.5).start()
        self.a = self.master()
        self.a.wait_log(r"elected leader of cluster bot \(epoch (\d+)\)", 15)
        self.b = self.master()
        self.b.wait_log(r"following the leader at ws://127\.0\.0\.1:%d" % self.a.port, 15)
        self.m = self.a
        self.agents = {}
        for i in range(machines):
            name = "m%d" % i
            self.agents[name] = self.fleet.agent(
                self.a.port, name, "--master", "ws://127.0.0.1:%d" % self.b.port, command=CLUSTER)
        return self.a

    def owners(self, m):
        return {x["id"]: sorted(x["shards"]) for x in status(m)["machines"] if x["shards"]}

    def settled(self):
        self.wait_all_ready()
        self.wait_open(range(24))
        wait_for(lambda: status(self.m)["sessions_known"] >= 24, 20, "every session known")

    def leads(self, m):
        return role(m)[0] == "leader"

    def all_connected(self, m, n=3):
        try:
            st = status(m)
        except Exception:
            return False
        return sum(1 for x in st.get("machines", []) if x["state"] == "live") == n

    def test_a_killed_leader_is_replaced_without_moving_or_identifying(self):
        self.start()
        self.settled()
        before = self.owners(self.a)
        self.assertEqual(self.check_sessions()["identify_count"], 24)
        self.assertEqual(role(self.b), ("follower", "ws://127.0.0.1:%d" % self.a.port))

        t0 = time.monotonic()
        self.a.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: self.leads(self.b), TTL + 5, "the follower to lead")
        t1 = time.monotonic()
        self.assertLessEqual(t1 - t0, TTL + 1.0, "takeover took %.2fs" % (t1 - t0))
        wait_for(lambda: self.all_connected(self.b), 10, "every agent on the new leader")
        t2 = time.monotonic()
        self.assertLessEqual(t2 - t1, 2.0, "agents took %.2fs to reach the new leader" % (t2 - t1))

        self.m = self.b
        self.wait_all_ready()
        self.assertEqual(self.owners(self.b), before)  # 0 shards moved
        self.b.wait_log(r"adopted 24 of 24 shards the fleet already runs", 10)
        time.sleep(1.5)  # anything the takeover would start, it would have by now
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)  # 0 identifies
        self.assertEqual(st["resumes"], [])  # nobody even had to resume
        self.check_budget()
        # The new term's epoch is higher, and its packets carry it.
        rx = r"elected leader of cluster bot \(epoch (\d+)\)"
        e_old = int(re.search(rx, self.a.wait_log(rx, 1)).group(1))
        e_new = int(re.search(rx, self.b.wait_log(rx, 1)).group(1))
        self.assertGreater(e_new, e_old)
        self.assertEqual(status(self.b)["ha"]["epoch"], e_new)
        self.no_secret_in_logs()

    def test_a_paused_leader_steps_down_and_never_connects_again(self):
        self.start()
        self.settled()
        before = self.owners(self.a)
        self.a.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: self.leads(self.b), TTL + 5, "the follower to lead")
        mark = self.a.mark()
        self.a.proc.send_signal(signal.SIGCONT)
        self.a.wait_log(r"stepping down as leader", 10, start=mark)
        wait_for(lambda: self.all_connected(self.b), 15, "every agent on the new leader")
        self.m = self.b
        self.wait_all_ready()
        after = "\n".join(self.a.log().split("\n")[mark:])
        self.assertNotIn("connect: ", after)  # it sent no `connect` after waking up
        self.assertNotIn("identify granted", after)
        self.assertNotIn("failed over", after)
        self.assertEqual(self.owners(self.b), before)
        # It campaigns again as a follower, and says so.
        try:
            wait_for(lambda: role(self.a)[0] == "follower", 10, "the old leader to follow")
        except AssertionError:
            raise AssertionError("the old leader does not follow; log:\n" + self.a.log())
        self.assertEqual(role(self.a)[1], "ws://127.0.0.1:%d" % self.b.port)
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)

    def test_a_follower_refuses_controls_and_names_the_leader(self):
        self.gw = FakeGateway(token=TOKEN, shards=4, max_concurrency=1).start()
        a = self.master()
        a.wait_log(r"elected leader", 15)
        b = self.master()
        b.wait_log(r"following the leader", 15)
        reply = raw_upgrade_reply(b.port)
        head, _, body = reply.partition("\r\n\r\n")
        self.assertTrue(head.startswith("HTTP/1.1 503 "), head)
        self.assertIn("Discluster-Role: follower", head)
        self.assertIn("Discluster-Leader: ws://127.0.0.1:%d" % a.port, head)
        d = json.loads(body)
        self.assertEqual((d["role"], d["leader"]), ("follower", "ws://127.0.0.1:%d" % a.port))
        st = status(b)
        self.assertEqual((st["role"], st["leader"]), ("follower", "ws://127.0.0.1:%d" % a.port))
        self.assertEqual(role(a), ("leader", "ws://127.0.0.1:%d" % a.port))
        # The leader key is in etcd under the cluster's prefix, bound to a lease.
        self.assertEqual(self.etcd.leader("bot")[0], "ws://127.0.0.1:%d" % a.port)
        # A clean stop of the leader revokes its lease: the follower leads at once.
        a.stop()
        wait_for(lambda: role(b)[0] == "leader", TTL, "the follower to lead after a clean stop")
        b.stop()

    def test_etcd_unavailable_at_start_then_up(self):
        self.gw = FakeGateway(token=TOKEN, shards=4, max_concurrency=1).start()
        self.etcd.kill()
        port = self.etcd.port
        m = self.master()
        m.wait_log(r"etcd.*127\.0\.0\.1:%d" % port, 10)  # names the endpoint it cannot reach
        self.assertEqual(role(m)[0], "follower")  # serves /healthz meanwhile
        time.sleep(1.5)
        self.etcd.start()
        wait_for(lambda: role(m)[0] == "leader", 15, "the master to lead once etcd is up")
        m.stop()

    def test_etcd_lost_while_leading_steps_down(self):
        self.start()
        self.settled()
        mark = self.a.mark()
        t0 = time.monotonic()
        self.etcd.freeze()
        self.a.wait_log(r"stepping down as leader", TTL + 5, start=mark)
        self.assertLess(time.monotonic() - t0, TTL + 1.0)  # before etcd could expire it
        for ag in self.agents.values():
            ag.wait_log(r"4020", 10)
        self.etcd.thaw()
        wait_for(lambda: self.leads(self.a) or self.leads(self.b), TTL + 10, "a leader again")
        self.m = self.a if self.leads(self.a) else self.b
        wait_for(lambda: self.all_connected(self.m), 15, "every agent on the leader")
        self.wait_all_ready()
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 24)

    def test_the_identify_record_survives_a_leader_change(self):
        """A new leader never grants faster than the last one's record allows,
        nor spends more of the budget than it left; and a leader writes it."""
        self.gw = FakeGateway(token=TOKEN, shards=8, max_concurrency=2,
                              identify_interval=GW_INTERVAL, remaining=1000,
                              dispatch_interval=0.5).start()
        # What a previous leader left: both buckets granted a moment ago, 900 left.
        now_ms = int(time.time() * 1000)
        self.etcd.put("/discluster/bot/identify", json.dumps(
            {"epoch": 1, "max_concurrency": 2, "interval_ms": 3000,
             "buckets": {"0": now_ms, "1": now_ms}, "remaining": 900, "total": 1000,
             "reset_at": now_ms + 3600 * 1000}))
        written = time.monotonic()
        m = self.fleet.master("--api-base", self.gw.api_base, "--expected-machines", "1",
                              "--collect-window", "20", *MASTER_FAST,
                              "--identify-interval", "3", "--etcd", self.etcd.url,
                              "--lease-ttl", str(TTL), "--cluster", "bot", token=TOKEN)
        m.wait_log(r"identify: 900 left in the budget as the last leader counted", 15)
        m.wait_log(r"identify: every bucket waits 3\.0s after the takeover \(the last leader's "
                   r"latest grant was", 5)
        self.m = m
        self.agents = {"m0": self.fleet.agent(m.port, "m0", command=CLUSTER)}
        self.wait_open(range(8), 60)
        st = self.check_sessions()
        self.assertEqual(st["identify_count"], 8)
        first = min(i["t"] for i in st["identifies"])
        # Every bucket waits one interval (3 s) from the takeover, so the planted
        # grants of a moment ago are respected; both clocks here are monotonic.
        self.assertGreaterEqual(first - written, 2.5)
        # It spent from the record's 900, not from Discord's 1000.
        self.assertEqual(status(m)["session_start_limit"]["remaining"], 900 - 8)
        rec = json.loads(self.etcd.get("/discluster/bot/identify"))
        self.assertEqual(rec["remaining"], 900 - 8)
        self.assertEqual(rec["epoch"], status(m)["ha"]["epoch"])
        self.assertEqual(rec["max_concurrency"], 2)

    def test_a_leader_key_that_is_no_url_is_not_repeated(self):
        """Whatever sits in the leader key never reaches a header, JSON or a
        close reason unless it is a plain ws[s]:// URL; the key's removal lets
        the master lead."""
        self.gw = FakeGateway(token=TOKEN, shards=2, max_concurrency=1).start()
        self.etcd.put("/discluster/bot/leader", 'ws://x"\r\nEvil: 1')
        m = self.master()
        m.wait_log(r"leader key holds no usable URL", 15)
        self.assertEqual(role(m), ("follower", None))
        head = raw_upgrade_reply(m.port).partition("\r\n\r\n")[0]
        self.assertTrue(head.startswith("HTTP/1.1 503 "), head)
        self.assertNotIn("Evil", head)
        self.assertNotIn("Discluster-Leader", head)
        self.etcd.delete("/discluster/bot/leader")
        wait_for(lambda: role(m)[0] == "leader", 15, "the master to lead")
        m.stop()

    def test_a_new_etcd_cluster_starts_epochs_again(self):
        """Epochs count within one etcd cluster: after etcd is replaced by an
        empty one (its revisions start again), agents follow the new leader's
        lower epoch rather than refusing it with 4021 forever."""
        self.gw = FakeGateway(token=TOKEN, shards=4, max_concurrency=1,
                              identify_interval=GW_INTERVAL, dispatch_interval=0.5).start()
        for i in range(30):  # a high revision, so the first leader's epoch is high
            self.etcd.put("/warmup/%d" % i, "x")
        a = self.master("--expected-machines", "1")
        wait_for(lambda: role(a)[0] == "leader", 15, "a to lead")
        b_port = free_port()
        ag = self.fleet.agent(a.port, "m0", "--master", "ws://127.0.0.1:%d" % b_port,
                              command=CLUSTER)
        self.m = a
        self.wait_open(range(4), 30)
        e_old = status(a)["ha"]["epoch"]
        self.assertGreater(e_old, 30)
        a.proc.send_signal(signal.SIGKILL)
        self.etcd.close()
        self.etcd = Etcd()  # a new, empty etcd cluster
        b = self.master("--expected-machines", "1", "--listen", "127.0.0.1:%d" % b_port,
                        etcd=self.etcd.url)
        wait_for(lambda: role(b)[0] == "leader", 15, "b to lead on the new etcd")
        self.assertLess(status(b)["ha"]["epoch"], e_old)
        wait_for(lambda: self.all_connected(b, 1), 15, "the agent on the new leader")
        ag.wait_log(r"counts epochs in another etcd cluster", 5)
        # the refusal's own words: a bare "4021" also matches pids and ports
        self.assertEqual(ag.count(r"closing with 4021"), 0)
        self.m = b
        self.wait_open(range(4), 30)
        self.assertEqual(self.check_sessions()["identify_count"], 4)

    def test_bad_ha_options_are_refused(self):
        from harness import Master
        for args, want in [(("--etcd", "ftp://x"), "etcd:"),
                           (("--etcd", "http://127.0.0.1:1,"), "etcd:"),
                           (("--etcd", "http://127.0.0.1:1", "--cluster", "a/b"), "cluster:"),
                           (("--etcd", "http://127.0.0.1:1", "--lease-ttl", "1"), "lease_ttl"),
                           (("--advertise", "http://x:1"), "advertise")]:
            m = Master("--shards", "1", *args, wait=False)
            self.assertEqual(m.wait(10), 2, m.log())
            self.assertIn(want, m.log())


if __name__ == "__main__":
    unittest.main()
