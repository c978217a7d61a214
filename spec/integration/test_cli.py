"""The discluster-master command line: flags, the Lua config file, exit
statuses, secrets kept out of every output line, and signals.

Runs the real binary (DCM_MASTER_BIN) and talks to it with urllib and
python3-websockets only.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import BIN, Master, http_get, run  # noqa: E402

TOKEN = "tok-SECRET-7f3a9c"
AUTH = "auth-SECRET-51e2b8"
WRONG = "guess-SECRET-0d4e"
SECRETS = (TOKEN, AUTH, WRONG)

TMP = tempfile.mkdtemp(prefix="dcm-cli-")


def clean_env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "DISCLUSTER_AUTH")}
    e.update(extra)
    return e


def cli(*args, env=None, timeout=10):
    """Runs a command that must end by itself; (status, stdout, stderr)."""
    p = subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, env=env or clean_env(), timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A master started on a port chosen here; ready once /healthz answers."""

    def __init__(self, port, *args, env=None):
        self.port = port
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([BIN] + list(args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err,
                                     env=env or clean_env(), text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                if http_get(port, "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no /healthz on %d:\n%s" % (port, self.stop_log()))
            time.sleep(0.05)

    def stop(self, timeout=10):
        """SIGTERM; returns (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.err.seek(0)
        return rc, self.err.read()

    def stop_log(self):
        return self.stop()[1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def expect_config_error(args, want, env=None):
    rc, out, err = cli(*args, env=env)
    lines = err.splitlines()
    assert rc == 2, "%r: exit %d, want 2; stderr %r" % (args, rc, err)
    assert len(lines) == 1, "%r: want one line, got %r" % (args, err)
    assert lines[0].startswith("discluster-master: "), lines[0]
    assert want in lines[0], "%r: %r lacks %r" % (args, lines[0], want)
    assert out == "", "%r: stdout %r" % (args, out)
    for s in SECRETS:
        assert s not in err, "%r: a secret in %r" % (args, err)
    return lines[0]


# ---- tests ----

def test_help_and_version():
    rc, out, err = cli("--help")
    assert rc == 0 and err == "", (rc, err)
    assert out.startswith("Usage: discluster-master"), out
    for flag in ("-c, --config", "--listen", "--shards", "--max-concurrency", "--api-base",
                 "--policy", "--collect-window", "--expected-machines", "--heartbeat-interval",
                 "--heartbeat-grace", "--reconnect-grace", "--connect-timeout",
                 "--handshake-timeout", "--log-format", "--log-level", "--head-timeout",
                 "--max-unauthenticated-per-address", "--version",
                 "DISCORD_TOKEN", "DISCLUSTER_AUTH"):
        assert flag in out, "help lacks " + flag
    rc, out2, _ = cli("-h")
    assert rc == 0 and out2 == out
    rc, out, err = cli("--version")
    assert rc == 0 and err == "" and out.startswith("discluster-master 0.") and \
        out.count("\n") == 1, (rc, out, err)


def test_bad_flags():
    bad = [
        (["--shards", "1", "--collect-window", "soon"], "--collect-window: 'soon' is not a number"),
        (["--shards", "1", "--collect-window", "-1"], "--collect-window: must not be negative"),
        (["--shards", "1", "--heartbeat-interval=0"], "--heartbeat-interval: must be more than 0"),
        (["--shards", "1", "--reconnect-grace", "1s"], "--reconnect-grace:"),
        (["--shards", "1", "--handshake-timeout", "nan"], "--handshake-timeout:"),
        (["--shards", "1", "--connect-timeout", "1e999"], "--connect-timeout:"),
        (["--shards", "1", "--heartbeat-grace", ""], "--heartbeat-grace:"),
        (["--shards", "1", "--listen", "127.0.0.1"], "--listen: '127.0.0.1' is not HOST:PORT"),
        (["--shards", "1", "--listen", "127.0.0.1:70000"], "--listen: '127.0.0.1:70000' has no valid port"),
        (["--shards", "1", "--listen", "::1:80"], "--listen:"),
        (["--shards", "1", "--listen", "host.example:80"], "--listen:"),
        (["--shards", "zero"], "--shards: 'zero' is not auto or an integer"),
        (["--shards", "0"], "--shards:"),
        (["--shards", "1", "--max-concurrency", "-2"], "--max-concurrency:"),
        (["--shards", "1", "--expected-machines", "x"], "--expected-machines:"),
        (["--shards", "1", "--log-format", "yaml"], "--log-format: 'yaml' is not text or json"),
        (["--shards", "1", "--log-level", "trace"], "--log-level: 'trace' is not debug"),
        (["--shards", "1", "--api-base", "discord.com"], "--api-base:"),
        (["--shards", "1", "--policy", "/nonexistent.lua"], "--policy: cannot read"),
        (["--shards", "1", "--frobnicate"], "--frobnicate: unknown flag"),
        (["--shards", "1", "--token", TOKEN], "--token: unknown flag"),
        (["--shards"], "--shards: missing value"),
        (["--listen", "--shards", "1"], "--listen: missing value"),
        (["-c"], "-c: missing value"),
        (["--shards", "1", "extra"], "'extra': unexpected argument"),
        (["--version=2"], "--version: takes no value"),
        ([], "token: shards = auto needs a Discord bot token"),
    ]
    for args, want in bad:
        expect_config_error(args, want)


def test_bad_config_files():
    cases = [
        ("shards = 2\nshard_count = 4\n", ":2: unknown key 'shard_count'"),
        ("shards = 2\ncollect_window = '45'\n", ":2: collect_window: expected a number of seconds, got string"),
        ("shards = true\n", ":1: shards: expected \"auto\" or an integer, got boolean"),
        ("shards = 2\nheartbeat_grace = -3\n", ":2: heartbeat_grace: must not be negative"),
        ("shards = 2\nlisten = '0.0.0.0'\n", ":2: listen: '0.0.0.0' is not HOST:PORT"),
        ("shards = 2\nlog_level = 3\n", ":2: log_level: expected a string, got number"),
        ("shards = 2\n\nlisten = = 1\n", ":3:"),
        ("shards = 2\nerror('no good')\n", ":2: no good"),
        ("shards = 2\nos.execute('true')\n", ":2: attempt to call a nil value (field 'execute')"),
        ("shards = 2\nlocal f = io.open('/etc/passwd')\n", ":2: attempt to index a nil value (global 'io')"),
        ("shards = 2\nwhile true do end\n", ":2: instruction budget exceeded"),
        # work inside one C call is charged too: start-up never hangs
        ("shards = 2\ntable.move({}, 1, math.maxinteger, 1)\n", ":2: instruction budget exceeded"),
        ("shards = 2\nlocal s = string.rep('a', 4096)\n"
         "while true do s:find(s:sub(2048) .. 'b', 1, true) end\n", ":3: instruction budget exceeded"),
    ]
    for text, want in cases:
        path = write("bad.lua", text)
        line = expect_config_error(["-c", path], want)
        assert path in line, line
    expect_config_error(["-c", os.path.join(TMP, "missing.lua")], "missing.lua: cannot open: No such file")
    expect_config_error(["-c", TMP, "--shards", "1"], ": cannot read: Is a directory")


def test_secrets_never_echoed():
    env = clean_env(DISCORD_TOKEN=TOKEN, DISCLUSTER_AUTH=AUTH)
    expect_config_error(["--listen", TOKEN], "--listen: '***' is not", env=env)
    expect_config_error(["-c", write("s1.lua", "auth = 42\n")],
                        ":1: auth: expected a string, got number", env=env)
    expect_config_error(["-c", write("s2.lua", "error(os.getenv('DISCORD_TOKEN'))\n")], ":1: ***", env=env)
    expect_config_error(["-c", write("s3.lua", "token = '%s'\nlisten = token\n" % WRONG)],
                        ":2: listen: '***' is not", env=env)
    expect_config_error(["-c", write("s4.lua", "auth = '%s\\n'\n" % AUTH)],
                        ":1: auth: must not contain control characters")
    expect_config_error(["--shards", "1"], "DISCLUSTER_AUTH: must not contain control characters",
                        env=clean_env(DISCLUSTER_AUTH=AUTH + "\n"))
    # a long secret cut short when echoed: its start must not show either
    long_token = "MTAxMjM0NTY3ODkwMTIzNDU2Nzg5.GabcDE." + "x" * 40
    line = expect_config_error(["--listen", long_token], "--listen: '***",
                               env=clean_env(DISCORD_TOKEN=long_token))
    assert long_token[:8] not in line, line


def test_insecure_listen_refused():
    port = free_port()
    expect_config_error(["--listen", "0.0.0.0:%d" % port, "--shards", "1"],
                        "refusing to listen on non-loopback address 0.0.0.0")
    expect_config_error(["--listen", "[::]:%d" % port, "--shards", "1"], "non-loopback")
    path = write("open.lua", "listen = '0.0.0.0:%d'\nshards = 1\n" % port)
    expect_config_error(["-c", path], "non-loopback")
    # an empty secret is no secret
    expect_config_error(["-c", path], "non-loopback", env=clean_env(DISCLUSTER_AUTH=""))
    # --no-auth is for loopback only
    expect_config_error(["-c", path, "--no-auth"], "non-loopback")
    # a secret but no TLS: the token would cross the network in cleartext
    expect_config_error(["-c", path], "non-loopback address 0.0.0.0 without TLS",
                        env=clean_env(DISCLUSTER_AUTH=AUTH))
    # unless plaintext is asked for explicitly: then a warning at start-up
    with Proc(port, "-c", path, "--allow-plaintext", env=clean_env(DISCLUSTER_AUTH=AUTH)) as m:
        rc, log = m.stop()
        assert rc == 0, log
        assert "listening on 0.0.0.0:%d" % port in log, log
        assert "warn" in log and "travels to CONTROLs in cleartext" in log, log
    # no secret at all, even on loopback, needs --no-auth
    line = expect_config_error(["--shards", "1"], "refusing to start without a CONTROL secret")
    assert "--no-auth" in line, line
    port = free_port()
    with Proc(port, "--listen", "127.0.0.1:%d" % port, "--shards", "1", "--no-auth") as m:
        rc, log = m.stop()
        assert rc == 0, log
        assert "cleartext" not in log, log


def test_bad_tls_files():
    bogus = write("bogus.pem", "not a certificate\n")
    for args, want in ((["--tls-cert", bogus, "--tls-key", bogus], "tls_cert: cannot load"),
                       (["--tls-cert", bogus], "tls_cert and tls_key: set both")):
        rc, out, err = cli("--shards", "1", "--no-auth", *args)
        assert rc == 2, (args, rc, err)
        assert want in err, (args, err)


def test_start_healthz_hup_term():
    port = free_port()
    with Master("--listen", "127.0.0.1:%d" % port, "--shards", "2") as m:
        assert m.port == port, m.port
        assert http_get(port, "/healthz")[0] == 200
        mark = m.mark()
        m.signal(signal.SIGHUP)
        m.wait_log(r"policy reloaded", 5, mark)
        time.sleep(0.2)
        assert m.proc.poll() is None, "SIGHUP killed the master:\n" + m.log()
        assert http_get(port, "/healthz")[0] == 200
        t0 = time.monotonic()
        m.signal(signal.SIGTERM)
        rc = m.wait(10)
        took = time.monotonic() - t0
        assert rc == 0, "exit %d after SIGTERM:\n%s" % (rc, m.log())
        assert took < 3, "SIGTERM took %.1fs" % took
    with Master("--shards", "2") as m:  # ephemeral port, reported in the log
        assert http_get(m.port, "/healthz")[0] == 200
        m.signal(signal.SIGINT)
        assert m.wait(10) == 0, m.log()


def test_port_in_use():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        rc, out, err = cli("--listen", "127.0.0.1:%d" % s.getsockname()[1], "--shards", "1",
                           "--no-auth")
    assert rc == 1, (rc, err)
    assert err.splitlines()[-1] == "discluster-master: address already in use", err


def test_file_flags_override_and_relative_policy():
    d = os.path.join(TMP, "conf")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(harness.SRC, "policies", "default.lua")) as f:
        write(os.path.join("conf", "mine.lua"), f.read())
    port_file, port_flag = free_port(), free_port()
    path = write(os.path.join("conf", "master.lua"),
                 "-- ports and shards from the environment\n"
                 "local port = os.getenv('DCM_TEST_PORT')\n"
                 "listen = '127.0.0.1:' .. port\n"
                 "shards = tonumber(os.getenv('DCM_TEST_SHARDS'))\n"
                 "policy = 'mine.lua'\n"
                 "collect_window = 0.25 * 4\n"
                 "log_level = 'debug'\n"
                 "no_auth = true\n")
    env = clean_env(DCM_TEST_PORT=str(port_file), DCM_TEST_SHARDS="3")
    with Proc(port_file, "-c", path, env=env) as m:
        rc, log = m.stop()
        assert rc == 0, log
        assert "listening on 127.0.0.1:%d" % port_file in log, log
        assert os.path.join(d, "mine.lua") in log, log
        assert "collecting CONTROLs for 1s (3 shards" in log, log
    with Proc(port_flag, "-c", path, "--listen=127.0.0.1:%d" % port_flag, "--shards", "5",
              "--log-format", "json", "--collect-window=2.5", env=env) as m:
        rc, log = m.stop()
        assert rc == 0, log
        assert "collecting CONTROLs for 2.5s (5 shards" in log, log
        for line in log.splitlines():
            doc = json.loads(line)
            assert doc["level"] in ("debug", "info", "warn", "error"), line
    with Proc(port_flag, "-c", path, "--listen=127.0.0.1:%d" % port_flag, "--log-level=error",
              env=env) as m:
        rc, log = m.stop()
        assert rc == 0 and log == "", (rc, log)


async def _identify(m):
    ws, init = await harness.hello(m, "cli-test-1", {"Authorization": AUTH})
    assert init["d"]["token"] == TOKEN, init
    await ws.close()
    try:
        await harness.connect(m, {"Authorization": WRONG})
        raise AssertionError("a wrong secret was accepted")
    except Exception as e:  # websockets raises InvalidStatusCode
        assert "401" in str(e), e


def test_secrets_not_logged():
    for fmt in ("text", "json"):
        with Master("--shards", "2", "--log-level", "debug", "--log-format", fmt,
                    token=TOKEN, auth=AUTH) as m:
            run(_identify(m))
            rc = m.stop()
            log = m.log()
            assert rc == 0, log
            for s in SECRETS:
                assert s not in log, "%s log holds a secret:\n%s" % (fmt, log)


async def _fatal(m):
    ws, _ = await harness.hello(m, "cli-fatal-1", {"Authorization": AUTH})
    await harness.send(ws, harness.OP_FATAL, {"code": 4004, "message": "Authentication failed"})
    bye = await harness.recv_op(ws, harness.OP_SHUTDOWN)
    assert isinstance(bye["d"].get("reason"), str), bye
    await harness.closed_with(ws)


def test_fatal_exits_nonzero():
    with Master("--shards", "2", token=TOKEN, auth=AUTH) as m:
        run(_fatal(m))
        rc = m.wait(10)
        log = m.log()
        assert rc == 3, "exit %d after a fatal:\n%s" % (rc, log)
        for s in SECRETS:
            assert s not in log, log


TESTS = [test_help_and_version, test_bad_flags, test_bad_config_files, test_secrets_never_echoed,
         test_bad_tls_files,
         test_insecure_listen_refused, test_start_healthz_hup_term, test_port_in_use,
         test_file_flags_override_and_relative_policy, test_secrets_not_logged,
         test_fatal_exits_nonzero]


def main():
    failed = 0
    for t in TESTS:
        t0 = time.monotonic()
        try:
            t()
            print("ok   %s (%.2fs)" % (t.__name__, time.monotonic() - t0))
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__)
            traceback.print_exc(file=sys.stdout)
    subprocess.run(["rm", "-rf", TMP], check=False)
    print("%d/%d passed" % (len(TESTS) - failed, len(TESTS)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
