#!/usr/bin/python3
"""A fake Discord (REST GET /gateway/bot and the gateway), for tests and the demo.

Python 3 stdlib and python3-websockets (10.x, its asyncio server) only. Run it
as a process:

    /usr/bin/python3 spec/fake_gateway.py --port 0 --token T [options]

It prints ``PORT <n>`` as its first stdout line (flushed), then serves until
SIGTERM or SIGINT. Or import it and run it on a background thread:

    from fake_gateway import FakeGateway
    with FakeGateway(token="T", shards=4, max_concurrency=2) as gw:
        gw.port, gw.url, gw.api_base  # ws://127.0.0.1:<port>, http://.../api/v10
        gw.stats()                    # the /_stats JSON, as a dict
        gw.configure(refuse_resume=True)   # what POST /_config does
    # or gw = FakeGateway(...).start() ... gw.close()

One port serves everything.

HTTP (a request without ``Upgrade: websocket``; each answer closes the connection)
    GET <any path ending in /gateway/bot>
        Discord's body: {"url": "ws://HOST:PORT", "shards": --shards,
        "session_start_limit": {"total", "remaining", "reset_after" (ms),
        "max_concurrency"}}. ``reset_after`` counts down from --reset-after;
        when it reaches 0, ``remaining`` goes back to ``total`` and a new
        window of --reset-after starts. Authorization must be exactly
        ``Bot <token>``, else 401 {"message": "401: Unauthorized", "code": 0}.
    GET /_stats    the statistics below, JSON.
    POST /_config  a JSON object that changes, at run time, any of: "token"
        (non-empty string), "fatal_shards" ({"<shard>": close code}, replaces
        the map), "disallowed_intents" (int >= 0), "refuse_resume" (bool:
        every RESUME gets INVALID_SESSION d:false). 200 {"ok": true}; a bad
        body is 400 and changes nothing.
    Any other path is 404, a method other than GET and POST 405.

The gateway (a WebSocket upgrade on any path; clients use ``/?v=10&encoding=json``
and ``/resume/?v=10&encoding=json``), JSON text frames {"op", "d", "s", "t"}:
    - On connect: op 10 HELLO {"heartbeat_interval": --heartbeat-interval}.
    - op 1 heartbeat: answered with op 11. No heartbeat timeout is enforced.
    - op 2 IDENTIFY {token, intents, properties, shard: [id, count]}. Every
      IDENTIFY received, valid or not, takes one from ``remaining`` (which
      stops at 0; nothing is refused then). Checked in this order:
        already identified or resumed                -> close 4005
        token wrong                                  -> close 4004
        shard missing or invalid (id < 0, id >= count) -> close 4010
        count != --shards (unless --any-shard-count) -> close 4010
        intents not an integer                       -> close 4013
        intents & disallowed mask                    -> close 4014
        shard in fatal_shards                        -> close with its code
        the previous IDENTIFY that got this far in the shard's bucket
        (shard % --max-concurrency) was less than --identify-interval
        seconds ago                                  -> op 9 INVALID_SESSION
                                                        d:false (connection stays open)
      otherwise, after --ready-delay seconds (heartbeats are still answered;
      a close meanwhile is outcome "closed:<code>"), dispatch READY (op 0, s 1) with
      session_id (random hex), resume_gateway_url ("ws://HOST:PORT/resume"),
      shard, user, guilds [].
    - While a session is open it gets a MESSAGE_CREATE dispatch every
      --dispatch-interval seconds (0: none) with increasing ``s``; the last
      1000 events of each session are kept for replay.
    - op 6 RESUME {token, session_id, seq}: on a connection that already has
      a session -> close 4005; wrong token -> close 4004. An unknown session,
      one closed longer than --resume-window seconds ago, one the client ended
      (closed with 1000 or 1001), a seq beyond the session's or older than the
      events kept, or any resume while refuse_resume is set -> op 9 d:false.
      Otherwise: if the session is attached to another open connection, that
      connection is closed first with 4009 "Session taken over."; then the
      events after ``seq`` are replayed and RESUMED (with the next ``s``) is
      dispatched. Any other close, a dropped TCP connection included, leaves
      the session resumable.
    - Not JSON, not an object or no integer op: close 4002. Unknown op: close 4001.
      Messages over 1 MiB: close 1009. At most 4096 connections (HTTP 503 beyond).

A session is open from READY/RESUMED until its connection closes (or it is
taken over). Shards are keyed "N", or "N/COUNT" when COUNT differs from
--shards (--any-shard-count); a shard that gets a second open session is a
"double session".

/_stats (and stats()); JSON object keys are strings; ``t`` is time.monotonic()
of this process (CLOCK_MONOTONIC, comparable across processes on Linux); lists
keep their last 10000 entries, the counts count everything:
    identifies        [{shard, num_shards, bucket, t, outcome}] outcome is
                      "ready" | "invalid_session" | "closed:<code>"
    identify_count    IDENTIFY received
    invalid_sessions  op 9 sent for identifies (rate limit)
    resumes           [{shard, num_shards, t, outcome}] outcome is "resumed" |
                      "invalid_session" | "closed:4004" (shard null when unknown)
    resumed_count     RESUMED sent
    open              {shard: sessions open now}
    max_open_per_shard  the most sessions ever open at once for one shard
    double_sessions   [{shard, num_shards, t}] every moment a shard got a second
                      open session
    closes            {code: count} of every gateway connection's close, sent by
                      either side (1006: dropped without a close frame)
    remaining         identifies left in the window
    sessions          {shard: {session_id, seq, open}} latest per shard
    last_event_t      {shard: t of the last dispatch sent}
    resumed_t         {shard: t of the last RESUMED}

Options: --host (127.0.0.1) --port (0) --token (required) --shards (1)
--max-concurrency (1) --identify-interval (5.0 s) --total (1000) --remaining
(= total) --reset-after (ms, 86400000) --heartbeat-interval (ms, 41250)
--dispatch-interval (1.0 s) --resume-window (120 s) --ready-delay (0 s)
--disallowed-intents MASK (0) --fatal-shard N:CODE (repeatable)
--any-shard-count --verbose (a line per identify/resume on stderr).
Sessions kept: at most 20000 (ended and expired ones are dropped first).
"""

import argparse
import asyncio
import collections
import http
import json
import secrets
import signal
import sys
import threading
import time

import websockets
from websockets.legacy.http import read_headers, read_line
from websockets.legacy.server import WebSocketServerProtocol

MAX_CONNECTIONS = 4096
MAX_MESSAGE = 1 << 20
MAX_BODY = 64 * 1024
MAX_LIST = 10000
MAX_SESSIONS = 20000
EVENTS_KEPT = 1000

REASONS = {
    4001: "Unknown opcode.", 4002: "Decode error.", 4004: "Authentication failed.",
    4005: "Already authenticated.", 4009: "Session taken over.", 4010: "Invalid shard.",
    4011: "Sharding required.", 4012: "Invalid API version.", 4013: "Invalid intent(s).",
    4014: "Disallowed intent(s).",
}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_close_code(c):
    return _is_int(c) and (c in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011)
                           or 3000 <= c <= 4999)


def _header(headers, name):
    """The header's value; None when it is missing or repeated."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _close_code(ws):
    """The close code of a finished connection, whichever side sent it."""
    if ws.close_rcvd_then_sent:
        return ws.close_rcvd.code
    if ws.close_sent is not None:
        return ws.close_sent.code
    if ws.close_rcvd is not None:
        return ws.close_rcvd.code
    return 1006


class _Session:
    def __init__(self, sid, shard, count, key):
        self.id, self.shard, self.count, self.key = sid, shard, count, key
        self.seq = 0
        self.events = collections.deque(maxlen=EVENTS_KEPT)
        self.conn = None        # the connection that owns it, or None
        self.open = False       # counted in open[] (from READY/RESUMED)
        self.ended = False      # the client closed with 1000/1001
        self.closed_at = None
        self.ticker = None


class _Conn:
    def __init__(self, ws):
        self.ws = ws
        self.session = None
        self.pending = None     # (task, identify record) during --ready-delay


class _Proto(WebSocketServerProtocol):
    """Reads any HTTP/1.1 request line (websockets only takes GET), so POST
    /_config can be answered from process_request."""

    async def read_http_request(self):
        try:
            line = await read_line(self.reader)
            method, raw_path, version = line.split(b" ", 2)
            if version != b"HTTP/1.1":
                raise ValueError("unsupported HTTP version")
            headers = await read_headers(self.reader)
            body = b""
            n = int(_header(headers, "Content-Length") or "0")
            if n < 0 or n > MAX_BODY:
                raise ValueError("body too large")
            if n:
                body = await self.reader.readexactly(n)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise websockets.exceptions.InvalidMessage("bad HTTP request") from e
        self.http_method = method.decode("ascii", "replace")
        self.http_body = body
        self.path = raw_path.decode("ascii", "surrogateescape")
        self.request_headers = headers
        return self.path, headers

    async def process_request(self, path, headers):
        return self.fake._http(self, path, headers)


class FakeGateway:
    """The fake; start() runs it on a thread, close() stops it."""

    def __init__(self, token, host="127.0.0.1", port=0, shards=1, max_concurrency=1,
                 identify_interval=5.0, total=1000, remaining=None, reset_after=86400000,
                 heartbeat_interval=41250, dispatch_interval=1.0, resume_window=120.0,
                 ready_delay=0.0, disallowed_intents=0, fatal_shards=None,
                 any_shard_count=False, verbose=False):
        if not token:
            raise ValueError("a token is required")
        if shards < 1 or max_concurrency < 1:
            raise ValueError("shards and max_concurrency must be >= 1")
        self.token = token
        self.host, self._want_port = host, port
        self.shards, self.max_concurrency = shards, max_concurrency
        self.identify_interval = identify_interval
        self.total = total
        self.remaining = total if remaining is None else remaining
        self.reset_after_ms = reset_after
        self.heartbeat_interval = heartbeat_interval
        self.dispatch_interval = dispatch_interval
        self.resume_window = resume_window
        self.ready_delay = ready_delay
        self.disallowed_intents = disallowed_intents
        self.fatal_shards = {}
        for k, v in (fatal_shards or {}).items():
            if not _valid_close_code(v):
                raise ValueError("bad close code %r" % (v,))
            self.fatal_shards[int(k)] = v
        self.any_shard_count = any_shard_count
        self.refuse_resume = False
        self.verbose = verbose
        self.port = None
        self._window_start = time.monotonic()
        self._sessions = {}
        self._bucket_last = {}
        self._open = collections.Counter()
        self._latest = {}
        self._st = {
            "identifies": collections.deque(maxlen=MAX_LIST), "identify_count": 0,
            "invalid_sessions": 0, "resumes": collections.deque(maxlen=MAX_LIST),
            "resumed_count": 0, "max_open_per_shard": 0,
            "double_sessions": collections.deque(maxlen=MAX_LIST),
            "closes": collections.Counter(), "last_event_t": {}, "resumed_t": {},
        }
        self._loop = None
        self._thread = None
        self._server = None
        self._stop = None

    # ---- running -------------------------------------------------------------------------

    @property
    def url(self):
        return "ws://%s:%d" % (self.host, self.port)

    @property
    def api_base(self):
        return "http://%s:%d/api/v10" % (self.host, self.port)

    async def _open_server(self):
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()

        def proto(*a, **kw):
            p = _Proto(*a, **kw)
            p.fake = self
            return p

        self._server = await websockets.serve(
            self._handler, self.host, self._want_port, create_protocol=proto,
            max_size=MAX_MESSAGE, ping_interval=None, close_timeout=2, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_server(self):
        self._server.close()
        await self._server.wait_closed()

    async def run(self, on_listening=None):
        """Serves in the running loop until close() (or stop_soon())."""
        await self._open_server()
        if on_listening:
            on_listening()
        await self._stop
        await self._close_server()

    def stop_soon(self):
        """From the loop's thread (a signal handler): ends run()."""
        if self._stop and not self._stop.done():
            self._stop.set_result(None)

    def start(self):
        started = threading.Event()
        failed = []

        def main():
            try:
                asyncio.run(self.run(started.set))
            except BaseException as e:  # reported to start()'s caller
                failed.append(e)
                started.set()

        self._thread = threading.Thread(target=main, name="fake-gateway", daemon=True)
        self._thread.start()
        started.wait(10)
        if failed:
            raise failed[0]
        if self.port is None:
            raise RuntimeError("fake gateway did not start")
        return self

    def close(self):
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self.stop_soon)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _in_loop(self, fn):
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()

        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def stats(self):
        return self._in_loop(self._stats)

    def configure(self, **kw):
        """Same keys as POST /_config; raises ValueError on a bad one."""
        return self._in_loop(lambda: self._configure(kw))

    # ---- HTTP ----------------------------------------------------------------------------

    def _log(self, msg):
        if self.verbose:
            sys.stderr.write("fake_gateway: %s\n" % msg)
            sys.stderr.flush()

    def _http(self, proto, path, headers):
        if "websocket" in (_header(headers, "Upgrade") or "").lower():
            if len(proto.ws_server.websockets) > MAX_CONNECTIONS:
                return self._reply(503, {"message": "too many connections", "code": 0})
            if proto.http_method != "GET":
                return self._reply(405, {"message": "405: Method Not Allowed", "code": 0})
            return None
        p = path.split("?", 1)[0]
        method = proto.http_method
        if method not in ("GET", "POST"):
            return self._reply(405, {"message": "405: Method Not Allowed", "code": 0})
        if method == "GET" and p.endswith("/gateway/bot"):
            if _header(headers, "Authorization") != "Bot " + self.token:
                return self._reply(401, {"message": "401: Unauthorized", "code": 0})
            self._roll_window()
            left = self.reset_after_ms - (time.monotonic() - self._window_start) * 1000
            return self._reply(200, {
                "url": "ws://%s:%d" % (self.host, self.port), "shards": self.shards,
                "session_start_limit": {
                    "total": self.total, "remaining": self.remaining,
                    "reset_after": max(0, int(left)), "max_concurrency": self.max_concurrency}})
        if method == "GET" and p == "/_stats":
            return self._reply(200, self._stats())
        if method == "POST" and p == "/_config":
            try:
                cfg = json.loads(proto.http_body.decode("utf-8"))
                if not isinstance(cfg, dict):
                    raise ValueError("the body must be a JSON object")
                self._configure(cfg)
            except (ValueError, UnicodeDecodeError) as e:
                return self._reply(400, {"message": str(e), "code": 0})
            return self._reply(200, {"ok": True})
        return self._reply(404, {"message": "404: Not Found", "code": 0})

    @staticmethod
    def _reply(status, obj):
        body = json.dumps(obj).encode()
        return (http.HTTPStatus(status), [("Content-Type", "application/json")], body)

    def _configure(self, cfg):
        new = {}
        for k, v in cfg.items():
            if k == "token":
                if not isinstance(v, str) or not v:
                    raise ValueError("token must be a non-empty string")
            elif k == "fatal_shards":
                if not isinstance(v, dict):
                    raise ValueError("fatal_shards must be an object")
                m = {}
                for s, c in v.items():
                    try:
                        sid = int(s)
                    except ValueError:
                        raise ValueError("fatal_shards key %r is not a shard id" % s)
                    if not _valid_close_code(c):
                        raise ValueError("fatal_shards[%s] is not a close code" % s)
                    m[sid] = c
                v = m
            elif k == "disallowed_intents":
                if not _is_int(v) or v < 0:
                    raise ValueError("disallowed_intents must be an integer >= 0")
            elif k == "refuse_resume":
                if not isinstance(v, bool):
                    raise ValueError("refuse_resume must be a boolean")
            else:
                raise ValueError("unknown key %r" % k)
            new[k] = v
        for k, v in new.items():
            setattr(self, k, v)

    def _roll_window(self):
        if (time.monotonic() - self._window_start) * 1000 >= self.reset_after_ms:
            self._window_start = time.monotonic()
            self.remaining = self.total

    def _stats(self):
        self._roll_window()
        st = self._st
        out = {
            "identifies": list(st["identifies"]),
            "identify_count": st["identify_count"],
            "invalid_sessions": st["invalid_sessions"],
            "resumes": list(st["resumes"]),
            "resumed_count": st["resumed_count"],
            "open": {k: n for k, n in self._open.items()},
            "max_open_per_shard": st["max_open_per_shard"],
            "double_sessions": list(st["double_sessions"]),
            "closes": {str(c): n for c, n in st["closes"].items()},
            "remaining": self.remaining,
            "sessions": {k: {"session_id": s.id, "seq": s.seq, "open": s.open}
                         for k, s in self._latest.items()},
            "last_event_t": dict(st["last_event_t"]),
            "resumed_t": dict(st["resumed_t"]),
        }
        return json.loads(json.dumps(out))

    # ---- the gateway ---------------------------------------------------------------------

    def _key(self, shard, count):
        return str(shard) if count == self.shards else "%d/%d" % (shard, count)

    async def _send(self, conn, op, d=None, s=None, t=None):
        await conn.ws.send(json.dumps({"op": op, "d": d, "s": s, "t": t}))

    async def _close(self, conn, code, reason=None):
        await conn.ws.close(code, reason if reason is not None else REASONS.get(code, ""))

    async def _handler(self, ws):
        conn = _Conn(ws)
        try:
            await self._send(conn, 10, {"heartbeat_interval": self.heartbeat_interval})
            async for msg in ws:
                try:
                    p = json.loads(msg) if isinstance(msg, str) else None
                except ValueError:
                    p = None
                if not isinstance(p, dict) or not _is_int(p.get("op")):
                    await self._close(conn, 4002)
                    break
                op, d = p["op"], p.get("d")
                if op == 1:
                    await self._send(conn, 11)
                elif op == 6 and (conn.session is not None or conn.pending is not None):
                    await self._close(conn, 4005)
                    break
                elif op == 2:
                    if not await self._identify(conn, d if isinstance(d, dict) else {}):
                        break
                elif op == 6:
                    if not await self._resume(conn, d if isinstance(d, dict) else {}):
                        break
                else:
                    await self._close(conn, 4001)
                    break
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # a bug here must not leave the connection hanging
            sys.stderr.write("fake_gateway: handler failed: %r\n" % (e,))
            await ws.close(1011, "internal error")
        finally:
            await ws.wait_closed()
            code = _close_code(ws)
            self._st["closes"][code] += 1
            if conn.pending is not None:
                task, rec = conn.pending
                task.cancel()
                rec["outcome"] = "closed:%d" % code
                self._st["identifies"].append(rec)
            s = conn.session
            if s is not None and s.conn is conn:
                self._detach(s)
                if ws.close_rcvd_then_sent and code in (1000, 1001):
                    s.ended = True

    def _attach_open(self, s, conn):
        s.conn = conn
        conn.session = s
        s.open = True
        s.closed_at = None
        self._latest[s.key] = s
        self._open[s.key] += 1
        n = self._open[s.key]
        if n > self._st["max_open_per_shard"]:
            self._st["max_open_per_shard"] = n
        if n >= 2:
            self._st["double_sessions"].append({"shard": s.shard, "num_shards": s.count,
                                                "t": time.monotonic()})
        if self.dispatch_interval > 0:
            s.ticker = asyncio.ensure_future(self._tick(s, conn))

    def _detach(self, s):
        if s.ticker is not None:
            s.ticker.cancel()
            s.ticker = None
        if s.open:
            self._open[s.key] -= 1
            if self._open[s.key] <= 0:
                del self._open[s.key]
        if s.conn is not None:
            s.conn.session = None
        s.open = False
        s.conn = None
        s.closed_at = time.monotonic()

    async def _dispatch(self, s, conn, t, d):
        s.seq += 1
        ev = {"op": 0, "d": d, "s": s.seq, "t": t}
        s.events.append(ev)
        self._st["last_event_t"][s.key] = time.monotonic()
        await conn.ws.send(json.dumps(ev))

    async def _tick(self, s, conn):
        try:
            while True:
                await asyncio.sleep(self.dispatch_interval)
                await self._dispatch(s, conn, "MESSAGE_CREATE", {
                    "id": str(s.seq + 1), "channel_id": "1",
                    "content": "event %d of shard %s" % (s.seq + 1, s.key)})
        except websockets.ConnectionClosed:
            pass

    def _prune(self):
        if len(self._sessions) < MAX_SESSIONS:
            return
        now = time.monotonic()
        for sid, s in list(self._sessions.items()):
            if s.conn is None and (s.ended or now - s.closed_at > self.resume_window):
                del self._sessions[sid]
        for sid, s in sorted(self._sessions.items(), key=lambda kv: kv[1].closed_at or now):
            if len(self._sessions) < MAX_SESSIONS:
                break
            if s.conn is None:
                del self._sessions[sid]

    async def _identify(self, conn, d):
        """False when the connection was closed."""
        now = time.monotonic()
        self._st["identify_count"] += 1
        self._roll_window()
        self.remaining = max(0, self.remaining - 1)
        rec = {"shard": None, "num_shards": None, "bucket": None, "t": now, "outcome": None}
        shard = d.get("shard")
        valid = (isinstance(shard, list) and len(shard) == 2 and _is_int(shard[0])
                 and _is_int(shard[1]) and 0 <= shard[0] < shard[1])
        if valid:
            sid, count = shard
            rec.update(shard=sid, num_shards=count, bucket=sid % self.max_concurrency)
        intents = d.get("intents")
        code = None
        if conn.session is not None or conn.pending is not None:
            code = 4005
        elif d.get("token") != self.token:
            code = 4004
        elif not valid or (count != self.shards and not self.any_shard_count):
            code = 4010
        elif not _is_int(intents):
            code = 4013
        elif intents & self.disallowed_intents:
            code = 4014
        elif sid in self.fatal_shards:
            code = self.fatal_shards[sid]
        if code is not None:
            rec["outcome"] = "closed:%d" % code
            self._st["identifies"].append(rec)
            self._log("identify shard=%s -> close %d" % (rec["shard"], code))
            await self._close(conn, code)
            return False
        last = self._bucket_last.get(rec["bucket"])
        self._bucket_last[rec["bucket"]] = now
        if last is not None and now - last < self.identify_interval:
            rec["outcome"] = "invalid_session"
            self._st["identifies"].append(rec)
            self._st["invalid_sessions"] += 1
            self._log("identify shard=%d bucket=%d -> INVALID_SESSION (%.3fs after the last)"
                      % (sid, rec["bucket"], now - last))
            await self._send(conn, 9, False)
            return True
        if self.ready_delay > 0:  # the connection keeps answering heartbeats meanwhile
            conn.pending = (asyncio.ensure_future(self._ready_later(conn, rec)), rec)
            return True
        await self._ready(conn, rec)
        return True

    async def _ready_later(self, conn, rec):
        await asyncio.sleep(self.ready_delay)
        conn.pending = None
        try:
            await self._ready(conn, rec)
        except websockets.ConnectionClosed:
            pass

    async def _ready(self, conn, rec):
        sid, count = rec["shard"], rec["num_shards"]
        self._prune()
        s = _Session(secrets.token_hex(16), sid, count, self._key(sid, count))
        self._sessions[s.id] = s
        rec["outcome"] = "ready"
        self._st["identifies"].append(rec)
        self._attach_open(s, conn)  # the ticker sleeps first: READY goes out first
        await self._dispatch(s, conn, "READY", {
            "v": 10, "session_id": s.id, "shard": [sid, count],
            "resume_gateway_url": "ws://%s:%d/resume" % (self.host, self.port),
            "user": {"id": "1", "username": "fake-bot", "discriminator": "0", "bot": True},
            "guilds": [], "application": {"id": "1", "flags": 0}})
        self._log("identify shard=%s -> READY %s" % (s.key, s.id))

    async def _resume(self, conn, d):
        now = time.monotonic()
        if d.get("token") != self.token:
            self._st["resumes"].append({"shard": None, "num_shards": None, "t": now,
                                        "outcome": "closed:4004"})
            await self._close(conn, 4004)
            return False
        s = self._sessions.get(d.get("session_id")) if isinstance(d.get("session_id"),
                                                                   str) else None
        seq = d.get("seq")
        seq = seq if _is_int(seq) and seq >= 0 else 0
        ok = (s is not None and not s.ended and not self.refuse_resume
              and (s.conn is not None or now - s.closed_at <= self.resume_window)
              and seq <= s.seq
              and (not s.events or seq >= s.events[0]["s"] - 1))
        if not ok:
            self._st["resumes"].append({"shard": s and s.shard, "num_shards": s and s.count,
                                        "t": now, "outcome": "invalid_session"})
            self._log("resume shard=%s -> INVALID_SESSION" % (s and s.key))
            await self._send(conn, 9, False)
            return True
        old = s.conn
        if old is not None:
            self._detach(s)
        s.conn = conn  # claimed: a concurrent resume takes it over from here
        conn.session = s
        if old is not None:
            await self._close(old, 4009)
        for ev in [e for e in s.events if e["s"] > seq]:
            if s.conn is not conn:
                return True
            await conn.ws.send(json.dumps(ev))
        if s.conn is not conn:
            return True
        self._attach_open(s, conn)
        await self._dispatch(s, conn, "RESUMED", None)
        t = time.monotonic()
        self._st["resumes"].append({"shard": s.shard, "num_shards": s.count, "t": now,
                                    "outcome": "resumed"})
        self._st["resumed_count"] += 1
        self._st["resumed_t"][s.key] = t
        self._log("resume shard=%s -> RESUMED %s" % (s.key, s.id))
        return True


def _fatal_arg(text):
    shard, sep, code = text.partition(":")
    try:
        shard, code = int(shard), int(code)
    except ValueError:
        raise argparse.ArgumentTypeError("expected N:CODE, got %r" % text)
    if not sep or not _valid_close_code(code):
        raise argparse.ArgumentTypeError("expected N:CODE with a close code, got %r" % text)
    return shard, code


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Discord: /gateway/bot and the gateway.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", required=True)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--max-concurrency", type=int, default=1)
    ap.add_argument("--identify-interval", type=float, default=5.0)
    ap.add_argument("--total", type=int, default=1000)
    ap.add_argument("--remaining", type=int, default=None)
    ap.add_argument("--reset-after", type=int, default=86400000, help="milliseconds")
    ap.add_argument("--heartbeat-interval", type=int, default=41250, help="milliseconds")
    ap.add_argument("--dispatch-interval", type=float, default=1.0)
    ap.add_argument("--resume-window", type=float, default=120.0)
    ap.add_argument("--ready-delay", type=float, default=0.0)
    ap.add_argument("--disallowed-intents", type=int, default=0)
    ap.add_argument("--fatal-shard", type=_fatal_arg, action="append", default=[])
    ap.add_argument("--any-shard-count", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    try:
        gw = FakeGateway(a.token, a.host, a.port, a.shards, a.max_concurrency,
                         a.identify_interval, a.total, a.remaining, a.reset_after,
                         a.heartbeat_interval, a.dispatch_interval, a.resume_window,
                         a.ready_delay, a.disallowed_intents, dict(a.fatal_shard),
                         a.any_shard_count, a.verbose)
    except ValueError as e:
        ap.error(str(e))

    async def serve():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gw.stop_soon)
        await gw.run(lambda: print("PORT %d" % gw.port, flush=True))

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
