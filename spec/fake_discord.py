#!/usr/bin/python3
"""A fake Discord REST server for GET /gateway/bot, stdlib only.

Run it as a process:

    /usr/bin/python3 spec/fake_discord.py --port 0 --script SPEC [--token T]

It prints ``PORT <n>`` as its first stdout line (flushed), then serves until
killed. Or import it and run it in-process:

    from fake_discord import FakeDiscord
    with FakeDiscord("429:0.2,200:shards=4") as fd:
        api_base = fd.base_url           # "http://127.0.0.1:<port>/api/v10"
        ...
        fd.requests()                    # what it has seen so far
        fd.set_script("401")             # new script, from its first item

Any path ending in ``/gateway/bot`` takes the next SPEC item, so api_base may
be ``http://127.0.0.1:<port>`` or ``http://127.0.0.1:<port>/api/v10``.

SPEC is a comma-separated list of items, one per request, the last repeating:

    200[:k=v...]   success. Keys: url, shards, total, remaining, reset_after
                   (milliseconds, as Discord sends it), max_concurrency.
                   Defaults: wss://gateway.discord.gg, 1, 1000, 1000,
                   14400000, 1. A value ``omit`` drops the key, ``null`` sends
                   JSON null, a number sends a number, anything else a string.
                   Values cannot contain ':' or ','.
    401, 403, 404, 500, 502, ...   that status with a small JSON error body.
    429:S          429 with ``retry_after: S`` (seconds) in the body only.
    429h:S         429 with a ``Retry-After: S`` header only.
    malformed      200 with a truncated, invalid JSON body.
    big[:N]        200 with a valid gateway body padded to N bytes (128 KiB),
                   sent without Content-Length (the body ends at close).
    bigcl[:N]      the same with a Content-Length header.
    redirect[:URL] 302 to URL (default: this server's own /gateway/bot).
    slow:S         waits S seconds, then answers like ``200``.
    close          closes the connection without answering.

With ``--token T`` a request whose Authorization is not ``Bot T`` gets 401
whatever the script says (the item is still consumed).

Control endpoints (not recorded):
    GET  /_requests   JSON list of requests seen: method, path,
                      authorization_present, authorization, user_agent,
                      accept, time (time.monotonic() seconds), item (the
                      SPEC item served, or "notfound" for other paths).
    POST /_script     body is a new SPEC; starts again from its first item.
"""

import argparse
import http.server
import json
import sys
import threading
import time

DEFAULTS = {
    "url": "wss://gateway.discord.gg",
    "shards": 1,
    "total": 1000,
    "remaining": 1000,
    "reset_after": 14400000,
    "max_concurrency": 1,
}
LIMIT_KEYS = ("total", "remaining", "reset_after", "max_concurrency")


def _value(text):
    if text == "null":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_item(item):
    """Turns one SPEC item into (kind, args); raises ValueError."""
    parts = item.strip().split(":")
    kind, args = parts[0], parts[1:]
    if kind == "200":
        kv = {}
        for a in args:
            k, sep, v = a.partition("=")
            if not sep or k not in DEFAULTS:
                raise ValueError("bad 200 key %r in %r" % (a, item))
            kv[k] = v
        return ("200", kv)
    if kind in ("429", "429h", "slow"):
        if len(args) != 1:
            raise ValueError("%s needs one number: %r" % (kind, item))
        return (kind, float(args[0]))
    if kind in ("big", "bigcl"):
        return (kind, int(args[0]) if args else 128 * 1024)
    if kind == "redirect":
        return (kind, ":".join(args) if args else None)
    if kind in ("malformed", "close") and not args:
        return (kind, None)
    if kind.isdigit() and len(kind) == 3 and not args:
        return ("status", int(kind))
    raise ValueError("unknown SPEC item %r" % item)


def parse_spec(spec):
    """A list of (kind, args, item text)."""
    items = [parse_item(i) + (i.strip(),) for i in spec.split(",") if i.strip()]
    if not items:
        raise ValueError("empty SPEC")
    return items


def gateway_body(kv):
    body = {"url": DEFAULTS["url"], "shards": DEFAULTS["shards"],
            "session_start_limit": {k: DEFAULTS[k] for k in LIMIT_KEYS}}
    for k, raw in kv.items():
        where = body["session_start_limit"] if k in LIMIT_KEYS else body
        if raw == "omit":
            where.pop(k, None)
        else:
            where[k] = _value(raw)
    return body


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeDiscord/1"

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_discord: " + (fmt % args) + "\n")

    def _send(self, status, body=b"", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        fake = self.server.fake
        if self.path == "/_requests":
            self._send(200, fake.requests())
            return
        auth = self.headers.get("Authorization")
        path = self.path.split("?", 1)[0]
        if not path.endswith("/gateway/bot"):
            fake._record(self, auth, "notfound")
            self._send(404, {"message": "404: Not Found", "code": 0})
            return
        kind, arg, text = fake._next()
        fake._record(self, auth, text)
        if fake.token is not None and auth != "Bot " + fake.token:
            self._send(401, {"message": "401: Unauthorized", "code": 0})
            return
        if kind == "200":
            self._send(200, gateway_body(arg))
        elif kind == "status":
            self._send(arg, {"message": "HTTP %d" % arg, "code": 0})
        elif kind == "429":
            self._send(429, {"message": "You are being rate limited.",
                             "retry_after": arg, "global": False})
        elif kind == "429h":
            self._send(429, {"message": "You are being rate limited.", "global": False},
                       [("Retry-After", "%g" % arg)])
        elif kind == "malformed":
            self._send(200, b'{"url": "wss://gateway.discord.gg", "shards": ')
        elif kind in ("big", "bigcl"):
            body = gateway_body({})
            base = len(json.dumps(body)) + len(', "padding": ""')
            body["padding"] = "x" * max(0, arg - base)
            data = json.dumps(body).encode()
            if kind == "bigcl":
                self._send(200, data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up on the oversized body
        elif kind == "redirect":
            url = arg or "http://%s:%d/gateway/bot" % (fake.host, fake.port)
            self._send(302, b"", [("Location", url)])
        elif kind == "slow":
            time.sleep(arg)
            self._send(200, gateway_body({}))
        elif kind == "close":
            self.close_connection = True

    def do_POST(self):
        fake = self.server.fake
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(min(n, 65536)).decode()
        if self.path != "/_script":
            self._send(404, {"message": "404: Not Found", "code": 0})
            return
        try:
            fake.set_script(data)
        except ValueError as e:
            self._send(400, {"message": str(e)})
            return
        self._send(204)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeDiscord:
    """The server; start() runs it on a thread, stop() ends it."""

    def __init__(self, script="200", host="127.0.0.1", port=0, token=None,
                 verbose=False):
        self.host = host
        self.token = token
        self.verbose = verbose
        self._lock = threading.Lock()
        self._items = parse_spec(script)
        self._pos = 0
        self._log = []
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self._thread = None

    @property
    def base_url(self):
        return "http://%s:%d/api/v10" % (self.host, self.port)

    def set_script(self, spec):
        items = parse_spec(spec)
        with self._lock:
            self._items, self._pos = items, 0

    def requests(self):
        with self._lock:
            return [dict(r) for r in self._log]

    def _next(self):
        with self._lock:
            item = self._items[min(self._pos, len(self._items) - 1)]
            self._pos += 1
            return item

    def _record(self, handler, auth, item):
        with self._lock:
            self._log.append({
                "method": handler.command,
                "path": handler.path,
                "authorization_present": auth is not None,
                "authorization": auth,
                "user_agent": handler.headers.get("User-Agent"),
                "accept": handler.headers.get("Accept"),
                "time": time.monotonic(),
                "item": item,
            })

    def serve_forever(self):
        self._httpd.serve_forever(poll_interval=0.05)

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Discord /gateway/bot server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", default="200", help="SPEC, see the module docstring")
    ap.add_argument("--token", default=None, help="answer 401 to any other token")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    try:
        fake = FakeDiscord(a.script, a.host, a.port, a.token, a.verbose)
    except ValueError as e:
        ap.error(str(e))
    print("PORT %d" % fake.port, flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
