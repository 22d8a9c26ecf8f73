"""The throttling pieces on their own: token buckets refill at their rate and a success gives its
token back; concurrent checks of the same credentials run one verification."""

from __future__ import annotations

import asyncio
import threading

from kalamdb.server.auth import Authenticator
from kalamdb.server.logins import Throttle
from kalamdb.testing.waiting import async_wait_for


def test_bucket_refills_at_its_rate():
    t = Throttle(2)
    assert t.take("a", now=0.0) == 0 and t.take("a", now=0.0) == 0
    assert t.take("a", now=0.0) == 0.5  # empty: the next token comes in half a second
    assert t.take("a", now=0.5) == 0
    assert t.take("b", now=0.5) == 0  # keys are independent
    assert t.take("a", now=0.5, consume=False) > 0
    t.refund("a")
    assert t.take("a", now=0.5) == 0


async def test_concurrent_checks_of_the_same_credentials_share_one_verification():
    calls = []
    gate = threading.Event()

    def slow_verify(user: str, password: str):
        calls.append(user)
        gate.wait(5)
        return ("principal", user)

    auth = Authenticator(verify_password=slow_verify, principal_for=lambda uid: None, jwt_secret="s" * 32)
    tasks = [asyncio.create_task(auth.verify_credentials("svc", "pw", remote="127.0.0.1")) for _ in range(20)]
    await async_wait_for(lambda: calls, what="the first verification to start")
    await asyncio.sleep(0)  # every task gets to run up to its wait
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == ["svc"] and all(r == ("principal", "svc") for r in results)
