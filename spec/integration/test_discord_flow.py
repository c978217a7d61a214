"""MASTER against a fake Discord: the shard count and identify budget come
from GET /gateway/bot; errors retry or stop MASTER as documented.
"""
import asyncio
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fake_discord import FakeDiscord  # noqa: E402
from harness import OP_SHUTDOWN, Control, Master, closed_with, connect, run, status  # noqa: E402

TOKEN = "fake.bot.TOKEN-for-tests-only"
TIMING = ["--heartbeat-interval", "1", "--heartbeat-grace", "1", "--collect-window", "30"]


def master(fd, *extra, token=TOKEN):
    return Master("--api-base", fd.base_url, *TIMING, *extra, token=token)


class DiscordFlow(unittest.TestCase):

    def test_shard_count_and_limits_come_from_discord(self):
        with FakeDiscord("200:shards=5:max_concurrency=2:remaining=900:total=1000",
                         token=TOKEN) as fd:
            with master(fd, "--expected-machines", "1") as m:
                m.wait_log(r"state fetching -> collecting")
                st = status(m)
                self.assertEqual(st["shard_count"], 5)
                self.assertEqual(st["max_concurrency"], 2)
                self.assertEqual(st["session_start_limit"]["remaining"], 900)
                self.assertEqual(st["session_start_limit"]["total"], 1000)

                async def go():
                    a = Control(m, "a")
                    await a.start()
                    self.assertEqual(a.init["d"]["shard_count"], 5)
                    self.assertEqual(a.init["d"]["max_concurrency"], 2)
                    self.assertEqual(a.init["d"]["token"], TOKEN)
                    self.assertEqual((await a.next_connect())["shards"], [0, 1, 2, 3, 4])
                    await a.close()
                run(go())
                self.assertEqual(status(m)["session_start_limit"]["remaining"], 895)
                reqs = fd.requests()
                self.assertEqual(len(reqs), 1)
                self.assertEqual(reqs[0]["authorization"], "Bot " + TOKEN)
                self.assertIn("discluster-master", reqs[0]["user_agent"])
                self.assertEqual(m.stop(), 0)
                self.assertNotIn(TOKEN, m.log())

    def test_rejected_token_stops_master(self):
        for code in ("401", "403"):
            with FakeDiscord(code) as fd:
                with master(fd) as m:
                    rc = m.wait(10)
                    self.assertNotEqual(rc, 0)
                    m.wait_log(r"Discord rejected the bot token")
                    self.assertEqual(len(fd.requests()), 1)  # no retry loop
                    self.assertNotIn(TOKEN, m.log())

    def test_rate_limit_waits_then_retries(self):
        with FakeDiscord("429:0.6,200:shards=2") as fd:
            with master(fd) as m:
                m.wait_log(r"state fetching -> collecting", 10)
                reqs = fd.requests()
                self.assertEqual(len(reqs), 2)
                self.assertGreaterEqual(reqs[1]["time"] - reqs[0]["time"], 0.55)
                self.assertEqual(status(m)["shard_count"], 2)
                m.stop()

    def test_server_errors_and_bad_bodies_retry_with_backoff(self):
        with FakeDiscord("500,malformed,200:shards=3") as fd:
            with master(fd) as m:
                m.wait_log(r"state fetching -> collecting", 15)
                self.assertEqual(len(fd.requests()), 3)
                self.assertEqual(status(m)["shard_count"], 3)
                m.wait_log(r"attempt 1 failed")
                m.wait_log(r"attempt 2 failed")
                m.stop()

    def test_controls_are_held_while_fetching(self):
        # A CONTROL that identifies while MASTER asks Discord is kept, gets
        # initialise as soon as the shard count is known, and takes part.
        with FakeDiscord("slow:1.5") as fd:  # then a plain 200: 1 shard
            with master(fd, "--expected-machines", "1") as m:
                self.assertEqual(status(m)["state"], "fetching")

                async def go():
                    t0 = time.monotonic()
                    a = await Control(m, "a").start()  # returns once initialise came
                    self.assertGreater(time.monotonic() - t0, 0.5)
                    self.assertEqual(a.init["d"]["shard_count"], 1)
                    self.assertEqual((await a.next_connect())["shards"], [0])
                    await a.close()
                run(go())
                m.wait_log(r"\[a\] held until Discord's answer gives the shard count")
                m.stop()

    def test_a_restart_keeps_the_running_shard_count(self):
        # Discord now recommends 8; the fleet runs 4: MASTER keeps 4, stops nothing.
        with FakeDiscord("200:shards=8") as fd:
            with master(fd, "--expected-machines", "2") as m:
                m.wait_log(r"state fetching -> collecting")

                async def go():
                    fresh = Control(m, "a")  # joins first, runs nothing
                    await fresh.start()
                    self.assertEqual(fresh.init["d"]["shard_count"], 8)
                    b = Control(m, "b", shards=[0, 1, 2, 3], shard_count=4)
                    await b.start()
                    self.assertEqual(b.init["d"]["shard_count"], 4)
                    self.assertEqual((await b.next_connect())["shards"], [0, 1, 2, 3])
                    self.assertEqual((await fresh.next_connect())["shards"], [])
                    # the first joiner heard the kept count again
                    inits = [p for p in fresh.packets if p["o"] == 5]
                    self.assertEqual(inits[-1]["d"]["shard_count"], 4)
                    st = status(m)
                    self.assertEqual((st["shard_count"], st["recommended_shard_count"]), (4, 8))
                    for x in (fresh, b):
                        await x.close()
                run(go())
                m.wait_log(r"\[b\] the running fleet has 4 shards; Discord recommends 8\. Keeping 4 "
                           r"\(no cluster is stopped\)\. To reshard, restart the whole fleet with "
                           r"--shards 8")
                m.stop()

    def test_identify_budget_reserve_holds_grants_until_the_reset(self):
        # 4 shards, 12 sessions left, reserve 10: two grants, then wait for
        # reset_after, ask Discord again, and grant the rest.
        with FakeDiscord("200:shards=4:max_concurrency=4:remaining=12:reset_after=1500,"
                         "200:shards=4:max_concurrency=4:remaining=1000") as fd:
            with master(fd, "--expected-machines", "1", "--identify-reserve", "10",
                        "--identify-interval", "0.1") as m:
                m.wait_log(r"state fetching -> collecting")

                async def go():
                    a = Control(m, "a", identify_queue=True)
                    await a.start()
                    self.assertEqual((await a.next_connect())["shards"], [0, 1, 2, 3])
                    await a.identify(0, 1, 2, 3)
                    got = [(await a.next_grant())[1], (await a.next_grant())[1]]
                    self.assertEqual(sorted(got), [0, 1])
                    await a.no_grant(0.5)
                    st = status(m)
                    self.assertEqual(st["session_start_limit"]["remaining"], 10)
                    self.assertEqual(st["identify"]["waiting"], 2)
                    self.assertIn("budget", st["identify"]["blocked"])
                    self.assertEqual(st["identify"]["buckets"][0]["why"], "budget")
                    t0 = time.monotonic()
                    rest = [await a.next_grant(6), await a.next_grant(6)]
                    self.assertGreater(rest[0][0] - t0, 0.5)  # after the reset, not before
                    self.assertEqual(sorted(g[1] for g in rest), [2, 3])
                    st = status(m)
                    self.assertEqual(st["session_start_limit"]["remaining"], 998)
                    self.assertNotIn("blocked", st["identify"])
                    await a.close()
                run(go())
                m.wait_log(r"identify budget: 10 left, reserve 10: grants stop \(shards waiting: [12]\)")
                self.assertEqual(m.count(r"grants stop"), 1)
                self.assertEqual(len(fd.requests()), 2)
                m.stop()

    def test_a_bad_answer_while_running_keeps_the_fleet(self):
        # The budget runs out; asking again gets a 403: the fleet keeps
        # running (no shutdown), MASTER retries, and grants resume.
        with FakeDiscord("200:shards=2:max_concurrency=2:remaining=1:reset_after=100,"
                         "403,200:shards=2:max_concurrency=2:remaining=1000") as fd:
            with master(fd, "--expected-machines", "1", "--identify-reserve", "0",
                        "--identify-interval", "0.1") as m:
                m.wait_log(r"state fetching -> collecting")

                async def go():
                    a = Control(m, "a", identify_queue=True)
                    await a.start()
                    await a.next_connect()
                    await a.identify(0, 1)
                    await a.next_grant()
                    await a.no_grant(0.3)
                    self.assertEqual((await a.next_grant(20))[1] in (0, 1), True)
                    self.assertEqual(a.ops(OP_SHUTDOWN), [])
                    self.assertEqual(status(m)["state"], "running")
                    await a.close()
                run(go())
                m.wait_log(r"asking Discord for the identify budget failed .*the fleet keeps running")
                self.assertEqual(len(fd.requests()), 3)
                self.assertEqual(m.stop(), 0)

    def test_a_control_without_the_queue_is_charged_on_connect(self):
        # A v1 CONTROL never asks: every shard new to it counts as an identify.
        with FakeDiscord("200:shards=4:remaining=100") as fd:
            with master(fd, "--expected-machines", "2", "--reconnect-grace", "0.2") as m:
                m.wait_log(r"state fetching -> collecting")

                async def go():
                    a, b = Control(m, "a"), Control(m, "b")
                    await a.start()
                    await b.start()
                    await a.next_connect()
                    await b.next_connect()
                    self.assertEqual(status(m)["session_start_limit"]["remaining"], 96)
                    await a.drop()
                    await b.next_connect(3)  # a's 2 shards move to b: 2 more
                    self.assertEqual(status(m)["session_start_limit"]["remaining"], 94)
                    await b.close()
                run(go())
                m.stop()

    def test_missing_token_is_a_startup_error(self):
        with Master("--shards", "auto", wait=False) as m:
            self.assertEqual(m.wait(5), 2)
            self.assertIn("token", m.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
