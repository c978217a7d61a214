"""A real etcd (Debian's etcd-server) on loopback for the HA tests: a fresh
data directory, free client and peer ports, stopped, paused or killed on
demand, and a small client over its JSON gateway (curl-free: urllib)."""
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from harness import free_port

ETCD_BIN = os.environ.get("DCM_ETCD_BIN", shutil.which("etcd") or "/usr/bin/etcd")


class Etcd:
    def __init__(self, client_port=None, start=True):
        if not os.access(ETCD_BIN, os.X_OK):
            raise AssertionError("etcd not found at %s: apt-get install etcd-server "
                                 "(scripts/test installs it)" % ETCD_BIN)
        self.tmp = tempfile.TemporaryDirectory(prefix="dcm-etcd-")
        self.port = client_port or free_port()
        self.peer = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None
        self.logf = None
        if start:
            self.start()

    def start(self, timeout=20):
        peer = "http://127.0.0.1:%d" % self.peer
        self.logf = open(os.path.join(self.tmp.name, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [ETCD_BIN, "--name", "t", "--data-dir", os.path.join(self.tmp.name, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", "t=" + peer, "--logger", "zap", "--log-level", "error"],
            stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return self
            except Exception:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("etcd did not come up on %s:\n%s" % (self.url, self.log()))

    def log(self):
        try:
            with open(os.path.join(self.tmp.name, "etcd.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        if self.logf:
            self.logf.close()
            self.logf = None

    def close(self):
        self.kill()
        self.tmp.cleanup()

    def _post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def get(self, key):
        """The value of key (str) or None, and its create_revision."""
        r = self._post("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = r.get("kvs") or []
        if not kvs:
            return None, 0
        return (base64.b64decode(kvs[0].get("value", "")).decode(),
                int(kvs[0].get("create_revision", 0)))

    def put(self, key, value):
        self._post("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                  "value": base64.b64encode(value.encode()).decode()})
