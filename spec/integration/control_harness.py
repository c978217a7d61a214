"""Helpers for the discluster-control integration tests.

They run the real discluster-master (harness.Master) and the real agent
binary on loopback. The agent is found at $DCM_BUILD_DIR/src/control/
discluster-control (DCM_CONTROL_BIN overrides). Cluster commands are small
shell scripts written into a temporary directory; they record what they
saw (environment, pid) in files there.
"""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

from harness import LoggedProcess, Master, free_port, http_get  # noqa: F401

BUILD = os.environ.get("DCM_BUILD_DIR", "build")
CONTROL_BIN = os.environ.get("DCM_CONTROL_BIN",
                             os.path.join(BUILD, "src", "control", "discluster-control"))

# Short timings for a whole fleet on loopback.
MASTER_FAST = ["--heartbeat-interval", "0.5", "--heartbeat-grace", "1",
               "--reconnect-grace", "1", "--handshake-timeout", "3", "--connect-timeout", "10"]
AGENT_FAST = ["--retry", "0.2", "--stop-timeout", "2", "--restart-backoff", "0.1",
              "--drain-timeout", "10", "--log-level", "debug"]

# A cluster that records its environment and pid, prints READY and idles
# until SIGTERM or EOF on stdin (the agent gone).
RECORDING_CLUSTER = r"""#!/bin/sh
d="$TEST_DIR"
f="$d/cluster.$$"
env > "$f.env"
echo "start $$ $SHARD_IDS" >> "$d/starts"
[ -n "$READY_DELAY" ] && [ "$CLUSTER_ID" = "${SLOW_CLUSTER:-x}" ] && sleep "$READY_DELAY"
echo READY
exec cat >/dev/null
"""


class Fleet:
    """A temp dir with cluster scripts, and every process started, for cleanup."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="dcm-control-")
        self.dir = self.tmp.name
        self.agents = []
        self.masters = []
        self.script("cluster", RECORDING_CLUSTER)

    def script(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        return path

    def master(self, *args, **kw):
        m = Master(*args, **kw)
        m.auth = kw.get("auth")
        self.masters.append(m)
        return m

    def agent(self, master_port, id, *args, command=None, env=None, auth=None, prefix=(), url=None):
        a = Agent(master_port, id, *args, command=command or os.path.join(self.dir, "cluster"),
                  env=dict({"TEST_DIR": self.dir}, **(env or {})), auth=auth, prefix=prefix,
                  url=url)
        self.agents.append(a)
        return a

    def starts(self):
        """[(pid, [shards])] in start order."""
        try:
            with open(os.path.join(self.dir, "starts")) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "start":
                shards = [int(x) for x in parts[2].split(",")] if len(parts) > 2 else []
                out.append((int(parts[1]), shards))
        return out

    def envs(self):
        """{pid: {var: value}} of every cluster started."""
        out = {}
        for name in os.listdir(self.dir):
            m = re.match(r"cluster\.(\d+)\.env$", name)
            if m:
                with open(os.path.join(self.dir, name)) as f:
                    env = {}
                    for line in f.read().split("\n"):
                        if "=" in line:
                            k, v = line.split("=", 1)
                            env[k] = v
                    out[int(m.group(1))] = env
        return out

    def close(self):
        for a in self.agents:
            a.kill()
        for m in self.masters:
            m.__exit__()
        # Clusters of SIGKILLed agents see EOF on stdin and leave; make sure.
        for pid, _ in self.starts():
            kill_group(pid)
        self.tmp.cleanup()


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.05)


class Agent(LoggedProcess):
    """One discluster-control process; its stderr lines are collected."""

    def __init__(self, port, id, *args, command, env=None, auth=None, prefix=(), url=None):
        """prefix: argv run in front of the agent's (a shell that execs it);
        url: MASTER's URL instead of ws://127.0.0.1:port (wss://...), or a
        list of URLs, one --master each (none: [], for DISCLUSTER_MASTER)."""
        e = {k: v for k, v in os.environ.items() if k not in ("DISCLUSTER_AUTH", "DISCORD_TOKEN")}
        if auth is not None:
            e["DISCLUSTER_AUTH"] = auth
        e.update(env or {})
        self.id = id
        self.name = "agent " + id
        urls = url if isinstance(url, (list, tuple)) else [url or "ws://127.0.0.1:%d" % port]
        masters = [x for u in urls for x in ("--master", u)]
        argv = list(prefix) + [CONTROL_BIN] + masters + ["--id", id,
                               "--cluster-command", command] + AGENT_FAST + list(args)
        self._spawn(argv, e)



def status(master):
    auth = getattr(master, "auth", None)
    code, body, _ = http_get(master, "/status", {"Authorization": auth} if auth else None)
    assert code == 200, (code, body)
    return json.loads(body)


def shards_by_machine(master):
    return {x["id"]: sorted(x["shards"]) for x in status(master)["machines"]}


def wait_running(master, timeout=15):
    """Waits until MASTER is running with every shard assigned."""
    def ok():
        st = status(master)
        return st["state"] == "running" and not st["unassigned"] and st
    return wait_for(ok, timeout, "MASTER running with every shard assigned")


class FakeMaster:
    """A scripted MASTER (python3-websockets) for what the real one never
    sends, such as a shrinking `connect`. Use inside asyncio: `await start()`,
    then `await accept()` for the agent's connection."""

    def __init__(self):
        self.port = None
        self.conns = None
        self.server = None

    async def start(self, port=0):
        """Listens on 127.0.0.1:port (0: any free port; a port given again
        after stop() brings a MASTER back at the same address)."""
        import asyncio
        import websockets
        self.conns = asyncio.Queue()

        async def handler(ws, path=None):
            done = asyncio.get_running_loop().create_future()
            await self.conns.put((ws, done))
            await done  # keep the connection until the test is finished with it

        self.server = await websockets.serve(handler, "127.0.0.1", port, ping_interval=None)
        self.port = self.server.sockets[0].getsockname()[1]

    async def accept(self, timeout=10):
        import asyncio
        ws, done = await asyncio.wait_for(self.conns.get(), timeout)
        return Peer(ws, done)

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


class Peer:
    def __init__(self, ws, done):
        self.ws = ws
        self.done = done
        self.seen = []  # every packet received, in order

    async def send(self, op, d):
        await self.ws.send(json.dumps({"o": op, "d": d}))

    async def recv(self, op, timeout=10, where=None):
        """Next packet with opcode op (and where(d) true); others are kept in seen."""
        import asyncio
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no packet o=%d within %ss; seen %r" % (op, timeout, self.seen))
            try:
                p = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            except asyncio.TimeoutError:
                continue
            self.seen.append(p)
            if p["o"] == op and (where is None or where(p["d"])):
                return p

    def release(self):
        if not self.done.done():
            self.done.set_result(None)


def initialise(shard_count, heartbeat_ms=200, token="", max_concurrency=1, gateway_url=None):
    d = {"protocol": 1, "token": token, "heartbeat_interval": heartbeat_ms,
         "shard_count": shard_count, "max_concurrency": max_concurrency}
    if gateway_url is not None:
        d["gateway_url"] = gateway_url
    return d


# ---- the agent's identify endpoint (DISCLUSTER_IDENTIFY_URL) ----------------

IDENTIFY_URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/([0-9a-f]{32})$")


def ident_open(url, query="", method="GET", head=None, extra=b""):
    """Connects to an identify URL and sends one request (or `head`, raw
    bytes, instead); returns the socket: the answer may wait for a grant."""
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    if head is None:
        head = ("%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: test\r\n\r\n"
                % (method, u.path, query, u.netloc)).encode()
    s.sendall(head + extra)
    return s


def ident_answer(s, timeout=10):
    """Reads one answer until the agent closes: (status, headers, body).
    Checks what every answer must have: Content-Length matching the body
    and Connection: close."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no complete answer: %r" % data
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = (lines[0] + " ").split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    assert headers.get("connection") == "close", headers
    assert int(headers["content-length"]) == len(body), (headers, body)
    return int(status), headers, body.decode()


def ident_get(url, query="", **kw):
    """One request whose answer comes at once: (status, body)."""
    status, _, body = ident_answer(ident_open(url, query, **kw))
    return status, body
