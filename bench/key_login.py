"""`qpc-bench keylogin`: bots logging in by key (authChallenge + authRespond) against the node under test.

An owner account is registered and approves one bot key (the first login, timed with the approval round trip
through the owner's `botApprovalWait`). Then:
- latency: key logins one at a time (100 samples, or `--count` if fewer), each a challenge, an Ed25519 signature
  and a response, on one connection;
- throughput: `--count` logins (default 500), `--concurrency` in flight (at most the node's open challenges per
  key, `max_bot_challenges_per_key`, 64 by default) over `--producers` connections (default 4).
Each login writes twice (the nonce taken, then used) and once more for its session, so on SQLite this is bounded
by group commit, as every write is.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from quicnprotochat.bench.bots import Bot, Ed25519Signer
from quicnprotochat.bench.metrics import Latencies
from quicnprotochat.bench.scenarios import Context, rate
from quicnprotochat.client import NodeClient
from quicnprotochat.client.accounts import key_login_token, login_token, register

LATENCY_SAMPLES = 100
DEFAULT_COUNT = 500
BOT_NAME = "benchbot"


async def _approve_first_login(owner: NodeClient, owner_name: str, client: NodeClient, bot: Ed25519Signer) -> None:
    login = asyncio.ensure_future(key_login_token(client, bot, owner_name, BOT_NAME))
    digest = b""
    while True:
        view = await owner.bot_approval_wait(digest, timeout_ms=10_000)
        digest = view.digest
        asked = [r for r in view.requests if r.state == "pending" and r.identity_key == bot.identity_key]
        if asked:
            await owner.bot_approval_answer(asked[0].request_id, True)
            break
        if login.done():  # it failed: say why
            break
    await login


async def run_key_login(ctx: Context) -> dict[str, Any]:
    spec = ctx.spec
    connector = ctx.sending("keylogin")
    owner_account = Bot.new(f"klo{os.urandom(3).hex()}", 0)
    bot = Ed25519Signer(os.urandom(32))
    count = spec.count or DEFAULT_COUNT
    in_flight = max(1, min(spec.concurrency, 64))
    clients = [connector.client() for _ in range(max(1, spec.producers or 4))]
    owner = connector.client()
    try:
        await register(owner, owner_account.signer, owner_account.username, owner_account.password)
        owner.access_token = await login_token(
            owner, owner_account.signer, owner_account.username, owner_account.password
        )
        started = time.perf_counter_ns()
        await _approve_first_login(owner, owner_account.username, clients[0], bot)
        first_ms = round((time.perf_counter_ns() - started) / 1e6, 3)

        latency = Latencies()
        samples = min(LATENCY_SAMPLES, count)
        with ctx.live.counter("key logins one at a time", samples) as advance:
            for _ in range(samples):
                started = time.perf_counter_ns()
                await key_login_token(clients[0], bot, owner_account.username, BOT_NAME)
                latency.add_ns(time.perf_counter_ns() - started)
                advance()

        gate = asyncio.Semaphore(in_flight)
        with ctx.live.counter(f"{count} key logins, {in_flight} in flight", count) as advance:

            async def one(index: int) -> None:
                async with gate:
                    await key_login_token(clients[index % len(clients)], bot, owner_account.username, BOT_NAME)
                    advance()

            started = time.perf_counter_ns()
            await asyncio.gather(*(one(index) for index in range(count)))
            seconds = (time.perf_counter_ns() - started) / 1e9
    finally:
        await asyncio.gather(*(client.close() for client in [owner, *clients]), return_exceptions=True)
    return {
        "first_login_with_approval_ms": first_ms,
        "login_latency_ms": latency.summary(),
        "logins_per_s": rate(count, seconds),
        "logins": count,
        "in_flight": in_flight,
        "connections": len(clients),
    }
