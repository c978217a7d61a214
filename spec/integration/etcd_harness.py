"""A real etcd for the high-availability tests (docs/protocol.md, "High availability").

Etcd() starts /usr/bin/etcd (Debian's etcd-server; $DCM_ETCD_BIN overrides) on free
loopback ports with a temporary data dir, and removes both on close(). The tests read and
write etcd through its JSON gateway with urllib (keys and values base64), independently of
the project's own etcd client. freeze()/thaw() SIGSTOP and SIGCONT it; kill() and start()
bring it down and up again on the same ports and data.
"""
import base64
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request

from harness import LoggedProcess, free_port

ETCD_BIN = os.environ.get("DCM_ETCD_BIN") or "/usr/bin/etcd"


def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


class Etcd(LoggedProcess):
    name = "etcd"

    def __init__(self, wait=True):
        if not os.access(ETCD_BIN, os.X_OK):
            raise AssertionError("etcd not found at %s: install etcd-server (scripts/test "
                                 "installs it) or set DCM_ETCD_BIN" % ETCD_BIN)
        self.dir = tempfile.mkdtemp(prefix="dcm-etcd-")
        self.port = free_port()
        self.peer = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None
        self.start(wait)

    def start(self, wait=True):
        peer = "http://127.0.0.1:%d" % self.peer
        self._spawn([ETCD_BIN, "--name", "t", "--data-dir", os.path.join(self.dir, "data"),
                     "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", "t=" + peer], dict(os.environ))
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("/v3/kv/range", {"key": _b64("/ready")}, timeout=1)
                return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("etcd did not answer at %s; log:\n%s"
                                         % (self.url, self.log()))
                time.sleep(0.05)

    def call(self, path, body, timeout=5):
        """POSTs body (a dict) to the gateway; returns the decoded answer."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def get(self, key):
        """The value of key (bytes), or None."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def leader(self, cluster="discluster"):
        """(url, epoch, lease) of /discluster/<cluster>/leader, or None."""
        kvs = self.call("/v3/kv/range",
                        {"key": _b64("/discluster/%s/leader" % cluster)}).get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return (base64.b64decode(kv.get("value", "")).decode(), int(kv["create_revision"]),
                int(kv.get("lease", "0")))

    def revoke(self, lease):
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        if self.proc is not None:
            super().kill()

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc):
        self.close()
