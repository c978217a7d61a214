"""discluster-master check-policy: the policy sandbox from the command line.

Runs $DCM_MASTER_BIN check-policy against fleet files: JSON on stdout, a
table on stderr, exit 0; 1 with a one-line reason for an invalid policy or
result; 2 for bad arguments or a bad fleet.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

BIN = os.environ.get("DCM_MASTER_BIN", "build/discluster-master")
SRC = os.environ.get("DCM_SOURCE_DIR", ".")
DEFAULT = os.path.join(SRC, "policies", "default.lua")
BAD = os.path.join(SRC, "spec", "policy", "fixtures", "bad")
BY_CORES = os.path.join(SRC, "spec", "policy", "fixtures", "by_cores.lua")

FLEET = [
    {"id": "alpha", "cores": 4, "loadavg": 0.5, "shards": [0, 1, 2, 3, 4, 5, 6]},
    {"id": "bravo", "cores": 8, "loadavg": 2.0, "shards": [7, 8, 9, 10, 11, 12]},
    {"id": "charlie", "cores": 2, "loadavg": 0, "shards": [13, 14, 15]},
    {"id": "delta", "cores": 4, "loadavg": 0.1, "standby": True},
]


class CheckPolicy(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, text):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write(text if isinstance(text, str) else json.dumps(text))
        return path

    def run_cli(self, *args):
        p = subprocess.run([BIN, "check-policy", *args], capture_output=True,
                           text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def ok(self, *args):
        rc, out, err = self.run_cli(*args)
        self.assertEqual(rc, 0, err)
        return json.loads(out), err

    def fails(self, code, reason, *args):
        rc, out, err = self.run_cli(*args)
        self.assertEqual(rc, code, f"stdout={out!r} stderr={err!r}")
        self.assertEqual(out, "")
        self.assertIn(reason, err)
        return err

    def test_default_allocation(self):
        fleet = self.write("fleet.json", FLEET)
        result, err = self.ok(DEFAULT, "--fleet", fleet)
        self.assertEqual(result, {"alpha": list(range(0, 7)),
                                  "bravo": list(range(7, 13)),
                                  "charlie": [13, 14, 15]})
        self.assertIn("machine", err)
        self.assertIn("alpha", err)
        self.assertIn("0-6", err)

    def test_shards_and_max_concurrency(self):
        fleet = self.write("fleet.json", [dict(m, shards=[]) for m in FLEET])
        result, _ = self.ok(DEFAULT, "--fleet", fleet, "--shards", "64",
                            "--max-concurrency=4")
        every = sorted(s for v in result.values() for s in v)
        self.assertEqual(every, list(range(64)))
        for shards in result.values():
            if shards:
                self.assertEqual(shards[0] % 4, 0)

    def test_failover_to_standby_then_survivors(self):
        fleet = self.write("fleet.json", FLEET)
        result, err = self.ok(DEFAULT, "--fleet", fleet, "--dead", "alpha")
        self.assertEqual(result, {"bravo": [], "charlie": [],
                                  "delta": list(range(0, 7))})
        self.assertIn("added", err)
        no_standby = self.write("fleet2.json", FLEET[:3])
        result, _ = self.ok(BY_CORES, "--fleet", no_standby, "--dead", "alpha")
        # by cores 8:2 over 7 shards: 5.6, 1.4 -> 6, 1
        self.assertEqual(result, {"bravo": [0, 1, 2, 3, 4, 5], "charlie": [6]})

    def test_failover_with_no_live_machine(self):
        fleet = self.write("fleet.json", FLEET[:1])
        result, err = self.ok(DEFAULT, "--fleet", fleet, "--dead", "alpha")
        self.assertEqual(result, {})
        self.assertIn("unassigned", err)

    def test_bad_policies(self):
        fleet = self.write("fleet.json", FLEET)
        cases = {
            "syntax.lua": "unexpected symbol",
            "runtime.lua": "attempt to index a nil value",
            "infinite.lua": "instruction budget exceeded",
            "pcall_infinite.lua": "instruction budget exceeded",
            "memory_bomb.lua": "memory limit",
            "io.lua": "global 'io'",
            "os_execute.lua": "field 'execute'",
            "require.lua": "global 'require'",
            "load.lua": "global 'load'",
            "not_table.lua": "expected a table",
            "bad_shape.lua": "has the key 1",
            "gc.lua": "__gc",
        }
        for name, reason in cases.items():
            with self.subTest(name=name):
                err = self.fails(1, reason, os.path.join(BAD, name), "--fleet", fleet)
                self.assertEqual(len([l for l in err.splitlines() if l.startswith("error")]), 1, err)

    def test_time_budget(self):
        fleet = self.write("fleet.json", FLEET)
        for name in ("compare_nul_bomb.lua", "convert_bomb.lua", "collide_bomb.lua"):
            with self.subTest(name=name):
                self.fails(1, "time budget exceeded", os.path.join(BAD, name),
                           "--fleet", fleet, "--policy-timeout", "0.1")
        self.fails(2, "--policy-timeout needs seconds from 0.01 to 3600", DEFAULT,
                   "--fleet", fleet, "--policy-timeout", "0")
        self.fails(2, "--policy-timeout needs seconds", DEFAULT, "--fleet", fleet,
                   "--policy-timeout", "1s")

    def test_bad_result_at_call_time_is_not_hidden(self):
        # Passes the self-check (16 shards), misbehaves with 100.
        policy = self.write("p.lua", """
            return { allocate = function(machines, ctx)
              local t = {}
              for s = 0, ctx.shard_count - 1 do t[#t + 1] = s end
              if ctx.shard_count == 100 then t[#t] = nil end
              return { [machines[1].id] = t }
            end }
        """)
        fleet = self.write("fleet.json", [dict(m, shards=[]) for m in FLEET])
        self.ok(policy, "--fleet", fleet)
        self.fails(1, "leaves 1 shard(s) out, the first is 99", policy,
                   "--fleet", fleet, "--shards", "100")

    def test_print_does_not_corrupt_stdout(self):
        policy = self.write("p.lua", "print('hello from the policy')\n"
                                     "log('warn', 'careful')\nreturn {}\n")
        fleet = self.write("fleet.json", FLEET)
        result, err = self.ok(policy, "--fleet", fleet)
        self.assertEqual(len(result), 3)
        self.assertIn("hello from the policy", err)
        self.assertIn("careful", err)

    def test_policy_dir(self):
        d = os.path.join(self.tmp.name, "pol")
        os.mkdir(d)
        with open(DEFAULT) as src, open(os.path.join(d, "default.lua"), "w") as dst:
            dst.write(src.read().replace("\nreturn M", "\nM.ratio = function() return 1 end\nreturn M"))
        fleet = self.write("fleet.json", FLEET)
        empty = self.write("empty.lua", "return {}\n")
        result, _ = self.ok(empty, "--fleet", fleet, "--policy-dir", d)
        self.assertEqual([len(v) for v in result.values()], [6, 5, 5])
        self.fails(1, "default.lua", BY_CORES, "--fleet", fleet, "--policy-dir", self.tmp.name)

    def test_bad_fleets(self):
        cases = [
            ("not json", "not valid JSON"),
            ({"id": "a"}, "expected a JSON array"),
            ([], "expected a JSON array"),
            ([1], "machine 1 is not an object"),
            ([{"cores": 1, "loadavg": 0}], "id must be a string"),
            ([{"id": "a b", "cores": 1, "loadavg": 0}], "id must be 1-128 characters"),
            ([{"id": "a", "cores": 0, "loadavg": 0}], "cores must be an integer"),
            ([{"id": "a", "cores": 1.5, "loadavg": 0}], "cores must be an integer"),
            ([{"id": "a", "cores": 1, "loadavg": -1}], "loadavg must be a number"),
            ([{"id": "a", "cores": 1, "loadavg": 0, "standby": 1}], "standby must be"),
            ([{"id": "a", "cores": 1, "loadavg": 0, "shards": [16]}], "shard 16 is outside 0-15"),
            ([{"id": "a", "cores": 1, "loadavg": 0, "shards": ["1"]}], "array of integers"),
            ([{"id": "a", "cores": 1, "loadavg": 0, "shards": [1]},
              {"id": "b", "cores": 1, "loadavg": 0, "shards": [1]}], "listed by both"),
            ([{"id": "a", "cores": 1, "loadavg": 0}, {"id": "a", "cores": 1, "loadavg": 0}],
             "appears twice"),
            ([{"id": "a", "cores": 1, "loadavg": 0, "standby": True}], "no active"),
        ]
        for i, (fleet, reason) in enumerate(cases):
            with self.subTest(fleet=fleet):
                path = self.write(f"f{i}.json", fleet)
                self.fails(2, reason, DEFAULT, "--fleet", path)
        fleet = self.write("fleet.json", FLEET)
        self.fails(2, "no such machine", DEFAULT, "--fleet", fleet, "--dead", "zulu")
        self.fails(2, "cannot read", DEFAULT, "--fleet", fleet + ".missing")

    def test_usage(self):
        fleet = self.write("fleet.json", FLEET)
        self.fails(2, "FILE and --fleet are required", DEFAULT)
        self.fails(2, "unknown option --bogus", DEFAULT, "--fleet", fleet, "--bogus", "1")
        self.fails(2, "--shards needs an integer", DEFAULT, "--fleet", fleet, "--shards", "0")
        self.fails(2, "--max-concurrency needs", DEFAULT, "--fleet", fleet,
                   "--max-concurrency", "x")
        self.fails(2, "one policy FILE only", DEFAULT, DEFAULT, "--fleet", fleet)
        rc, out, _ = self.run_cli("--help")
        self.assertEqual(rc, 0)
        self.assertIn("usage: discluster-master check-policy", out)
        self.fails(1, "cannot open", os.path.join(self.tmp.name, "nope.lua"), "--fleet", fleet)


if __name__ == "__main__":
    unittest.main(verbosity=1, argv=[sys.argv[0]])
