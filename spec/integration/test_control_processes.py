"""discluster-control and the processes a cluster's command starts: a stop
waits for the whole process group (not only the shell) up to
--stop-timeout; processes that leave the group (setsid, double fork) are
adopted through the subreaper, keep their cluster alive (no duplicate
start), get the stop's signals, and never outlive the agent; children the
agent had before it started are left alone."""
import asyncio
import os
import signal
import time
import unittest

from control_harness import FakeMaster, Fleet, alive, initialise, kill_group, wait_for

OP_INFO, OP_OFFLOAD, OP_INITIALISE, OP_CONNECT, OP_READY = 0, 3, 5, 6, 10

# The shell does not exec its command, as in `cd /srv/bot && node bot.js`:
# SIGTERM kills the shell at once while the child takes a second to clean up.
SLOW_STOP = r"""#!/bin/sh
echo "start $$ $SHARD_IDS" >> "$TEST_DIR/starts"
cd "$TEST_DIR" && sh ./child
echo "the child returned"
"""

CHILD = r"""#!/bin/sh
trap 'sleep 1; echo cleaned > "$TEST_DIR/marker"; exit 0' TERM
echo READY
while :; do sleep 0.1; done
"""

# Double forks a sleep into a new session. The first group's command then
# exits (only the escaped sleep is left of it); the second stays. The
# second also leaves a process born in a new session with an empty
# environment, which no run can claim.
DETACHING = r"""#!/bin/sh
echo "start $$ $SHARD_IDS" >> "$TEST_DIR/starts"
( setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $! > "$TEST_DIR/escaped.$SHARD_IDS" )
case "$SHARD_IDS" in
  0,1) echo READY; exit 0 ;;
esac
( exec env -i TEST_DIR="$TEST_DIR" setsid sh -c \
    'sleep 601 </dev/null >/dev/null 2>&1 & echo $! > "$TEST_DIR/unowned"' )
echo READY
exec cat >/dev/null
"""


def ppid_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return None


class Processes(unittest.TestCase):

    def setUp(self):
        self.fleet = Fleet()
        self.extra = []  # pids to kill whatever happens

    def tearDown(self):
        for pid in self.extra:
            kill_group(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.fleet.close()

    def read_pid(self, name):
        path = os.path.join(self.fleet.dir, name)

        def text():
            try:
                with open(path) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return ""
        pid = int(wait_for(text, 10, name))
        self.extra.append(pid)
        return pid

    def test_stop_waits_for_the_whole_process_group(self):
        f = self.fleet
        f.script("child", CHILD)
        cmd = f.script("slow-stop", SLOW_STOP)
        marker = os.path.join(f.dir, "marker")

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = f.agent(fm.port, "patient", "--stop-timeout", "5", command=cmd)
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(4))
            await peer.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await peer.recv(OP_READY)
            mark = a.mark()
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            a.wait_log(r"cluster 0 stopped", 15, start=mark)
            # The shell died at once; the agent waited for its child's cleanup.
            self.assertTrue(os.path.exists(marker), a.log())
            self.assertNotIn("SIGKILL", a.log())
            self.assertNotIn("the child returned", a.log())
            peer.release()
            await fm.stop()
            a.signal(signal.SIGTERM)
            self.assertEqual(a.wait(10), 0, a.log())

        asyncio.run(go())

    def test_detached_processes_are_adopted_and_stopped(self):
        f = self.fleet
        cmd = f.script("detaching", DETACHING)

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = f.agent(fm.port, "escapes", "--shards-per-cluster", "2", "--stop-timeout", "3",
                        command=cmd)
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(4))
            await peer.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await peer.recv(OP_READY)
            gone = self.read_pid("escaped.0,1")  # its command has exited
            stays = self.read_pid("escaped.2,3")  # its command still runs
            unowned = self.read_pid("unowned")
            # A restart would come 0.1 s after a crash; give it ten times that.
            await asyncio.sleep(1)
            self.assertEqual(len(f.starts()), 2, a.log())
            self.assertNotIn("crashed", a.log())
            a.wait_log(r"cluster 0: its command exited \(exit status 0\) but processes it "
                       r"started still run", 1)
            for pid in (gone, stays):
                self.assertTrue(alive(pid))
                self.assertEqual(ppid_of(pid), a.proc.pid)  # adopted by the subreaper
            # SIGTERM: offload, an empty connect, then every cluster is stopped,
            # including what escaped; nothing outlives the agent.
            a.signal(signal.SIGTERM)
            await peer.recv(OP_OFFLOAD)
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            t0 = time.monotonic()
            while a.proc.poll() is None and time.monotonic() - t0 < 20:
                await asyncio.sleep(0.05)
            self.assertEqual(a.wait(5), 0, a.log())
            for pid in (gone, stays, unowned):
                self.assertFalse(alive(pid), "pid %d outlived the agent" % pid)
            for pid, _ in f.starts():
                self.assertFalse(alive(pid))
            log = a.log()
            self.assertIn("cluster 0 stopped", log)
            self.assertIn("cluster 1 stopped", log)
            self.assertIn("pid %d was started by a cluster but belongs to no running cluster"
                          % unowned, log)
            self.assertNotIn("did not stop within", log)  # sleep obeys SIGTERM
            self.assertEqual(len(f.starts()), 2)
            peer.release()
            await fm.stop()

        asyncio.run(go())

    def test_children_from_before_the_agent_are_left_alone(self):
        f = self.fleet
        before = os.path.join(f.dir, "before")
        # A shell starts a background job, then execs the agent: the job is the
        # agent's child from its first moment, but no cluster's.
        wrap = ["/bin/sh", "-c", 'sleep 60 </dev/null >/dev/null 2>&1 & echo $! > "$0"; '
                'exec "$@"', before]

        async def go():
            fm = FakeMaster()
            await fm.start()
            a = f.agent(fm.port, "wrapped", prefix=wrap)
            pid = self.read_pid("before")
            peer = await fm.accept()
            await peer.recv(OP_INFO)
            await peer.send(OP_INITIALISE, initialise(4))
            await peer.send(OP_CONNECT, {"shards": [0, 1, 2, 3], "redundant": False})
            await peer.recv(OP_READY)
            self.assertEqual(ppid_of(pid), a.proc.pid)
            a.signal(signal.SIGTERM)
            await peer.recv(OP_OFFLOAD)
            await peer.send(OP_CONNECT, {"shards": [], "redundant": True})
            self.assertEqual(a.wait(15), 0, a.log())
            self.assertTrue(alive(pid), a.log())
            self.assertNotIn("belongs to no running cluster", a.log())
            peer.release()
            await fm.stop()

        asyncio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
