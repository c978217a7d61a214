"""Peer strings in MASTER's JSON: /status and the shutdown broadcast stay
valid JSON whatever a CONTROL sends, and control characters are refused
where they would reach logs or /status (info.version, fatal.message).

MASTER used to write an empty array as a marker string and replace it in
the encoded text; a peer string holding '"' followed by that marker
("\\u0001\\u0002[]") broke the output. The real binary on loopback;
python3-websockets as the CONTROLs, urllib for /status.
"""
import asyncio
import unittest

from harness import (OP_ERROR, OP_FATAL, OP_HEARTBEAT, OP_SHUTDOWN, Control, Master,
                     closed_with, connect, info, machine, run, send, status)

TIMING = ["--heartbeat-interval", "1", "--heartbeat-grace", "1", "--handshake-timeout", "2"]
MARKER = "\u0001\u0002[]"  # the old empty-array marker
TRICKY = 'v1 "quoted" \\ back/slash \u00e9 [] {}'


class Versioned(Control):
    def _info(self):
        return dict(super()._info(), version=TRICKY)


class JsonText(unittest.TestCase):

    def test_peer_strings_round_trip_and_control_bytes_are_refused(self):
        with Master("--shards", "2", "--expected-machines", "1", "--collect-window", "30",
                    *TIMING) as m:
            async def go():
                a = Versioned(m, "a")
                await a.start()
                await a.next_connect()

                # /status carries the version exactly, as valid JSON
                self.assertEqual(machine(status(m), "a")["version"], TRICKY)

                # a version with control bytes is refused at the handshake
                ws = await connect(m)
                await send(ws, 0, info("b", version='x"' + MARKER))
                self.assertEqual(await closed_with(ws), 4002)
                self.assertIsNone(machine(status(m), "b"))

                # failed_clusters is free-form: the marker inside stays text
                note = '"' + MARKER
                await send(a.ws, OP_HEARTBEAT, {"loadavg": 1.0, "failed_clusters": [
                    {"cluster": 1, "shards": [0], "note": note}]})
                for _ in range(50):
                    got = machine(status(m), "a").get("failed_clusters")
                    if got:
                        break
                    await asyncio.sleep(0.05)
                self.assertEqual(got[0]["note"], note)

                # a fatal message with control bytes gets an error, nothing stops
                await send(a.ws, OP_FATAL, {"code": 4004, "message": "boom" + MARKER})
                for _ in range(50):
                    errs = a.ops(OP_ERROR)
                    if errs:
                        break
                    await asyncio.sleep(0.05)
                self.assertIn("control characters", errs[0]["d"]["message"])
                self.assertEqual(status(m)["state"], "running")

                # a clean fatal with JSON's special characters: the shutdown
                # broadcast parses and carries it
                await send(a.ws, OP_FATAL, {"code": 4004, "message": TRICKY})
                self.assertEqual(await a.closed(5), 1000)
                sd = a.ops(OP_SHUTDOWN)
                self.assertEqual(len(sd), 1)
                self.assertEqual(sd[0]["d"]["code"], 4004)
                self.assertIn(TRICKY, sd[0]["d"]["reason"])
            run(go())
            m.wait(10)
            line = m.wait_log(r"bad handshake, closing \(4002\)")
            self.assertIn("d.version must not contain control characters", line)
            self.assertNotIn("\u0001", m.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
