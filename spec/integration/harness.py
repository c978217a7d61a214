"""Shared helpers for the integration tests.

They start the real discluster-master binary on loopback and talk to it with
python3-websockets (an independent, well-known client), plain sockets and
urllib. Nothing here imports project code.
"""
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import websockets

BIN = os.environ.get("DCM_MASTER_BIN", "build/discluster-master")
SRC = os.environ.get("DCM_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

OP_INFO, OP_FATAL, OP_COMMAND, OP_OFFLOAD, OP_SHUTDOWN = 0, 1, 2, 3, 4
OP_INITIALISE, OP_CONNECT, OP_ERROR, OP_ACK, OP_HEARTBEAT, OP_READY = 5, 6, 7, 8, 9, 10
OP_IDENTIFY, OP_GRANT, OP_RELEASE, OP_SESSIONS, OP_STOPPED = 11, 12, 13, 14, 15

FAST = ["--collect-window", "0.5", "--heartbeat-interval", "1", "--heartbeat-grace", "1",
        "--reconnect-grace", "1", "--handshake-timeout", "2", "--connect-timeout", "3"]


class LoggedProcess:
    """A child process whose stderr lines are collected for wait_log()."""

    name = "process"

    def _spawn(self, argv, env):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, text=True,
                                     errors="replace")
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def log(self):
        with self.cond:
            return "\n".join(self.lines)

    def mark(self):
        with self.cond:
            return len(self.lines)

    def count(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for line in self.lines if rx.search(line))

    def wait_log(self, pattern, timeout=10, start=0):
        """Returns the first line (from index start) matching pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError("%s: no log line matching %r within %ss; log:\n%s"
                                         % (self.name, pattern, timeout, "\n".join(self.lines)))
                self.cond.wait(min(left, 0.1))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("%s did not exit within %ss; log:\n%s"
                                 % (self.name, timeout, self.log()))
        self.reader.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class Master(LoggedProcess):
    """One discluster-master process. Without a secret it runs with --no-auth
    (MASTER refuses to start without either) unless no_auth=False. With
    tls=(cert, key) it serves wss:// and https:// (see Certs)."""

    name = "master"

    def __init__(self, *args, env=None, token=None, auth=None, wait=True, no_auth=None,
                 tls=None, status_auth=None):
        e = {k: v for k, v in os.environ.items()
             if k not in ("DISCORD_TOKEN", "DISCLUSTER_AUTH", "DISCLUSTER_STATUS_AUTH")}
        if token is not None:
            e["DISCORD_TOKEN"] = token
        if auth is not None:
            e["DISCLUSTER_AUTH"] = auth
        if status_auth is not None:
            e["DISCLUSTER_STATUS_AUTH"] = status_auth
        if env:
            e.update(env)
        argv = [BIN] + list(args)
        if not any(a.startswith("--listen") for a in args):
            argv += ["--listen", "127.0.0.1:0"]
        if no_auth or (no_auth is None and auth is None and "--no-auth" not in args):
            argv.append("--no-auth")
        self.tls = tls
        if tls:
            argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self._spawn(argv, e)
        self.port = None
        if wait:
            line = self.wait_log(r"listening on \S+:(\d+)", 10)
            self.port = int(re.search(r"listening on \S+:(\d+)", line).group(1))

    def stop(self, timeout=15, check=True):
        """SIGTERM, then the exit status; with check, it must be a clean 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if check:
            log = self.log()
            assert rc == 0, "master exited with %s; log:\n%s" % (rc, log)
            for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                assert bad not in log, "sanitizer report in the log:\n" + log
        return rc

    def url(self, path="/", host="127.0.0.1"):
        return "%s://%s:%d%s" % ("wss" if self.tls else "ws", host, self.port, path)


def _target(target):
    """(port, ssl context or None) of a Master or a bare port."""
    if isinstance(target, Master):
        return target.port, target.tls[2] if target.tls else None
    return target, None


def tcp_connect(target, timeout=5, source=None, rcvbuf=None, sndbuf=None):
    """A socket to a Master (TLS when it serves TLS, trusting its CA, host
    name localhost) or to a bare port on 127.0.0.1."""
    port, ctx = _target(target)
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if source:
        s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    if ctx:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    return s


def http_get(target, path, headers=None, timeout=5, tls=None, method="GET", host="127.0.0.1"):
    """(status, body text, headers) of a request to a Master (https:// when it
    serves TLS) or a port on loopback; tls: an ssl.SSLContext for https://."""
    port, ctx = _target(target)
    tls = tls or ctx
    if tls and host == "127.0.0.1":
        host = "localhost"
    url = "%s://%s:%d%s" % ("https" if tls else "http", host, port, path)
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def raw_request(target, data, read=True, timeout=5):
    """Sends raw bytes (inside TLS to a TLS Master), returns what comes back
    until the server closes."""
    s = tcp_connect(target, timeout)
    s.sendall(data)
    out = b""
    if read:
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (ConnectionResetError, socket.timeout, ssl.SSLError):
            pass
    s.close()
    return out


async def connect(master, headers=None, path="/", **kw):
    """A python3-websockets client; over TLS (master.tls) it trusts master.ca."""
    if master.tls and "ssl" not in kw:
        kw["ssl"] = master.tls[2]
    return await websockets.connect(master.url(path), extra_headers=headers or {},
                                    open_timeout=5, close_timeout=3, ping_interval=None,
                                    max_size=None, **kw)


async def send(ws, op, d):
    await ws.send(json.dumps({"o": op, "d": d}))


async def recv(ws, timeout=5):
    msg = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(msg)


async def recv_op(ws, op, timeout=5):
    """Next packet with opcode op; other opcodes in between are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        p = await recv(ws, max(0.01, deadline - time.monotonic()))
        if p["o"] == op:
            return p


def info(id, cores=4, loadavg=1.0, **extra):
    d = {"id": id, "cores": cores, "loadavg": loadavg}
    d.update(extra)
    return d


async def hello(master, id, headers=None, **extra):
    """Connects, identifies, returns (ws, initialise packet)."""
    ws = await connect(master, headers)
    await send(ws, OP_INFO, info(id, **extra))
    init = await recv_op(ws, OP_INITIALISE)
    return ws, init


async def closed_with(ws, timeout=5):
    """Waits for the server to close; returns the close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


def run(coro):
    return asyncio.run(coro)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Control:
    """A scripted CONTROL agent speaking protocol v1 through websockets.

    It answers `info` requests and acknowledges `connect` at once; it sends
    `ready` by itself only when auto_ready is set, and heartbeats at the
    interval MASTER gives it while `beating` is true. With identify_queue it
    says so in `info`; grants it receives are collected (next_grant).
    """

    def __init__(self, master, id, cores=4, loadavg=1.0, standby=None, shards=None,
                 auto_ready=True, headers=None, identify_queue=False, handoff=False,
                 shard_count=None):
        self.master, self.id, self.cores, self.loadavg = master, id, cores, loadavg
        self.standby, self.report, self.auto_ready = standby, shards, auto_ready
        self.headers = headers
        self.identify_queue = identify_queue
        self.handoff = handoff
        self.shard_count = shard_count
        self.grants = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.ws = None
        self.init = None
        self.connects = asyncio.Queue()
        self.packets = []
        self.shards = None
        self.beating = True
        self.tasks = []

    def _info(self):
        d = {"id": self.id, "cores": self.cores, "loadavg": self.loadavg}
        if self.standby is not None:
            d["standby"] = self.standby
        if self.report is not None:
            d["shards"] = self.report
        if self.identify_queue:
            d["identify_queue"] = True
        if self.handoff:
            d["handoff"] = True
        if self.shard_count is not None:
            d["shard_count"] = self.shard_count
        return d

    async def start(self):
        self.ws = await connect(self.master, self.headers)
        await send(self.ws, OP_INFO, self._info())
        self.init = await recv_op(self.ws, OP_INITIALISE)
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._beat())]
        return self

    async def _read(self):
        try:
            async for msg in self.ws:
                p = json.loads(msg)
                self.packets.append(p)
                if p["o"] == OP_INFO:
                    await send(self.ws, OP_INFO, self._info())
                elif p["o"] == OP_CONNECT:
                    self.shards = p["d"]["shards"]
                    await send(self.ws, OP_ACK, {"o": OP_CONNECT})
                    if self.auto_ready:
                        await self.ready()
                    await self.connects.put(p["d"])
                elif p["o"] == OP_GRANT:
                    await self.grants.put((time.monotonic(), p["d"]["shard"]))
                elif p["o"] == OP_ERROR:
                    await self.errors.put(p["d"])
        except websockets.ConnectionClosed:
            pass

    async def _beat(self):
        interval = self.init["d"]["heartbeat_interval"] / 1000.0
        try:
            while True:
                await asyncio.sleep(interval / 2)
                if self.beating:
                    await send(self.ws, OP_HEARTBEAT, {"loadavg": self.loadavg})
        except websockets.ConnectionClosed:
            pass

    async def ready(self, shards=None):
        await send(self.ws, OP_READY, {"shards": self.shards if shards is None else shards})

    async def identify(self, *shards):
        for s in shards:
            await send(self.ws, OP_IDENTIFY, {"shard": s})

    async def release(self, shard):
        await send(self.ws, OP_RELEASE, {"shard": shard})

    async def sessions(self, entries):
        """entries: [(shard, session_id, seq, resume_url)]."""
        await send(self.ws, OP_SESSIONS, {"sessions": [
            {"shard": s, "session_id": i, "seq": q, "resume_url": u} for s, i, q, u in entries]})

    async def stopped(self, shards):
        await send(self.ws, OP_STOPPED, {"shards": shards})

    async def next_grant(self, timeout=5):
        """(time.monotonic() when it arrived, shard)."""
        return await asyncio.wait_for(self.grants.get(), timeout)

    async def no_grant(self, wait=0.5):
        try:
            g = await asyncio.wait_for(self.grants.get(), wait)
        except asyncio.TimeoutError:
            return True
        raise AssertionError("%s got an unexpected grant %r" % (self.id, g))

    async def next_error(self, timeout=5):
        return await asyncio.wait_for(self.errors.get(), timeout)

    async def next_connect(self, timeout=5):
        return await asyncio.wait_for(self.connects.get(), timeout)

    async def no_connect(self, wait=0.5):
        try:
            d = await asyncio.wait_for(self.connects.get(), wait)
        except asyncio.TimeoutError:
            return True
        raise AssertionError("%s got an unexpected connect %r" % (self.id, d))

    def ops(self, op):
        return [p for p in self.packets if p["o"] == op]

    async def drop(self):
        """Loses the socket without a close frame."""
        for t in self.tasks:
            t.cancel()
        self.ws.transport.abort()
        await asyncio.sleep(0.05)

    async def close(self):
        for t in self.tasks:
            t.cancel()
        await self.ws.close()

    async def closed(self, timeout=5):
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code


def status(master, headers=None):
    code, body, _ = http_get(master, "/status", headers)
    assert code == 200, (code, body)
    st = json.loads(body)
    check_invariants(st)
    return st


def check_invariants(st):
    """Every shard belongs to exactly one machine, or is listed unassigned."""
    seen = {}
    for m in st["machines"]:
        for s in m["shards"]:
            assert s not in seen, "shard %d on %s and %s" % (s, seen[s], m["id"])
            seen[s] = m["id"]
    for s in st["unassigned"]:
        assert s not in seen, "shard %d unassigned and on %s" % (s, seen[s])
        seen[s] = None
    assert sorted(seen) == list(range(st["shard_count"])), st


def machine(st, id):
    for m in st["machines"]:
        if m["id"] == id:
            return m
    return None


def ws_frame(payload, op=1, mask=True, fin=True):
    """A client frame built by hand, for what websockets refuses to send."""
    head = bytes([(0x80 if fin else 0) | op])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def raw_upgrade(target, rcvbuf=None, auth=None, source=None, sndbuf=None):
    """A raw socket (TLS to a TLS Master) upgraded to WebSocket (the 101
    head consumed)."""
    s = tcp_connect(target, None, source, rcvbuf, sndbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % key)
    if auth:
        req += "Authorization: %s\r\n" % auth
    s.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def read_close_code(s, timeout=5):
    """Reads server frames until a close frame; returns its code (None if the
    connection ended without one, 1005 for a close frame without a code)."""
    s.settimeout(timeout)
    data = b""
    while True:
        while len(data) >= 2:
            n = data[1] & 0x7f
            hdr = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(data) < hdr:
                break
            if n == 126:
                n = struct.unpack(">H", data[2:4])[0]
            elif n == 127:
                n = struct.unpack(">Q", data[2:10])[0]
            if len(data) < hdr + n:
                break
            if data[0] & 0x0f == 8:
                return struct.unpack(">H", data[hdr:hdr + 2])[0] if n >= 2 else 1005
            data = data[hdr + n:]
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout, ssl.SSLError):
            return None
        if not chunk:
            return None
        data += chunk


def rss_kib(pid):
    """VmRSS of a process, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


# ---- TLS: a throwaway CA and certificates, made with the openssl command ----

OPENSSL = shutil.which("openssl")

CA_CONF = """[ca]
default_ca = d
[d]
database = %(dir)s/index
new_certs_dir = %(dir)s
serial = %(dir)s/serial
default_md = sha256
policy = p
copy_extensions = copy
unique_subject = no
[p]
commonName = supplied
"""


class Certs:
    """A CA made at test time in a temp dir, and certificates it signs (EC
    P-256). issue() returns (cert, key, context): the context is an
    ssl.SSLContext a client uses to trust this CA (Master takes the tuple as
    tls=)."""

    def __init__(self, name="test CA"):
        self.tmp = tempfile.TemporaryDirectory(prefix="dcm-tls-")
        self.dir = self.tmp.name
        self.ca = os.path.join(self.dir, "ca.pem")
        self.ca_key = os.path.join(self.dir, "ca.key")
        self.n = 0
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                      "-subj", "/CN=" + name)

    def _openssl(self, *args):
        r = subprocess.run([OPENSSL] + list(args), capture_output=True, text=True)
        assert r.returncode == 0, "openssl %s failed:\n%s" % (" ".join(args), r.stderr)

    def issue(self, cn="localhost", sans=("DNS:localhost", "IP:127.0.0.1"), expired=False):
        """A certificate for cn and sans signed by the CA; with expired, its
        whole validity lies in 2020 (openssl ca -startdate/-enddate)."""
        self.n += 1
        base = os.path.join(self.dir, "cert%d" % self.n)
        key, csr, cert = base + ".key", base + ".csr", base + ".pem"
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn,
                      "-addext", "subjectAltName=" + ",".join(sans))
        if expired:
            db = os.path.join(self.dir, "db%d" % self.n)
            os.mkdir(db)
            open(os.path.join(db, "index"), "w").close()
            with open(os.path.join(db, "serial"), "w") as f:
                f.write("%02X\n" % (100 + self.n))
            conf = os.path.join(db, "ca.cnf")
            with open(conf, "w") as f:
                f.write(CA_CONF % {"dir": db})
            self._openssl("ca", "-batch", "-config", conf, "-cert", self.ca, "-keyfile",
                          self.ca_key, "-in", csr, "-out", cert, "-notext",
                          "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
        else:
            self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                          "-set_serial", str(1000 + self.n), "-days", "2",
                          "-copy_extensions", "copyall", "-out", cert)
        return cert, key, self.client()

    def client(self):
        """An ssl.SSLContext that trusts only this CA and checks host names."""
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx

    def close(self):
        self.tmp.cleanup()
