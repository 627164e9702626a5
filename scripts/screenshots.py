"""Take docs/dashboard.png and docs/demo.png from a real server under light load.

    python scripts/screenshots.py [--seconds 45]

Starts ``tidings serve`` on a temporary data directory, adds a second app,
opens a few live streams and publishes a few notifications a second (users,
topics, a broadcast, a handful of bad requests), then has Chromium
(``/usr/bin/chromium``, through Playwright) log into the dashboard and open
the demo inbox.  Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import websockets

from tidings.core.auth import mint_token

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]
TITLES = ["user_17 replied to your comment", "user_17 and 41 others liked your post",
          "The tournament starts in 5 minutes", "Your order #4471 shipped",
          "New follower: night_owl", "Weekly summary is ready"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _traffic(url: str, main: tuple[str, str, str], shop: tuple[str, str, str],
                   seconds: float) -> None:
    """Live streams and publishes for two apps, each given as (app id, key, secret)."""
    ws_url = url.replace("http", "ws") + "/v1/me/stream"
    socks = []
    for (app, _key, secret), n in ((main, 40), (shop, 12)):
        for i in range(n):
            ws = await websockets.connect(ws_url)
            await ws.send(json.dumps({"type": "auth",
                                      "token": mint_token(app, f"u{i}", secret, 3600)}))
            socks.append(ws)

    async def drain(ws):
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.create_task(drain(ws)) for ws in socks]
    clients = {role: httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {k}"})
               for role, (_, k, _) in (("default", main), ("shop", shop))}
    await clients["default"].post("/v1/topics/guild:7/subscribers",
                                  json={"users": [f"u{i}" for i in range(25)]})
    await clients["default"].post("/v1/topics/post:42:followers/subscribers",
                                  json={"users": [f"u{i}" for i in range(8)]})
    await clients["shop"].post("/v1/topics/orders/subscribers",
                               json={"users": [f"u{i}" for i in range(12)]})
    rng = random.Random(7)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        app = "default" if rng.random() < 0.75 else "shop"
        to = rng.choice([{"topic": "guild:7"}, {"topic": "post:42:followers"},
                         {"users": [f"u{rng.randrange(40)}"]}] if app == "default"
                        else [{"topic": "orders"}, {"users": [f"u{rng.randrange(12)}"]}])
        if i % 150 == 0:
            to = {"all": True}
        await clients[app].post("/v1/notifications", json={
            "to": to, "title": rng.choice(TITLES), "category": "social"})
        if i % 60 == 0:  # some clients get it wrong
            await clients[app].get("/v1/users/x/notifications", params={"limit": "lots"})
        await asyncio.sleep(rng.uniform(0.01, 0.06))
    for c in clients.values():
        await c.aclose()
    for ws in socks:
        await ws.close()
    for r in readers:
        r.cancel()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=45.0, help="traffic before the shots")
    ap.add_argument("--out", type=Path, default=DOCS)
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    data = tempfile.mkdtemp(prefix="tidings-shots-")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(data) / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "tidings", "serve", "--data", data,
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        text = (Path(data) / "server.log").read_text()
        key = re.search(r"API key:\s+(\S+)", text).group(1)
        secret = re.search(r"signing secret:\s+(\S+)", text).group(1)
        shop = json.loads(subprocess.run(
            [sys.executable, "-m", "tidings", "app", "create", "Shop", "--json", "--data", data],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        traffic = threading.Thread(target=lambda: asyncio.run(_traffic(
            url, ("default", key, secret),
            (shop["app"], shop["api_key"], shop["signing_secret"]), a.seconds)))
        traffic.start()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/dashboard")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_selector("#live[data-state=live]")
            time.sleep(max(a.seconds - 5, 5))
            page.screenshot(path=str(a.out / "dashboard.png"), full_page=True)

            token = mint_token("default", "maria", secret, 3600)
            h = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
            for title, body, cat in [
                ("Your order #4471 shipped", "Arrives Thursday, tracking 1Z999AA1.", "orders"),
                ("user_17 replied to your comment", "“Totally agree, the second half was "
                 "better.”", "social"),
                ("The tournament starts in 5 minutes", "Guild 7 vs. Night Owls, best of three.",
                 "games")]:
                h.post("/v1/notifications", json={"to": {"users": ["maria"]}, "title": title,
                                                  "body": body, "category": cat})
            demo = browser.new_page(viewport={"width": 1200, "height": 720})
            demo.goto(f"{url}/demo?token={token}")
            demo.wait_for_selector("#status[data-state=live]")
            demo.locator("#list li").nth(2).click()  # the oldest one, read
            demo.wait_for_selector("#list li:nth-child(3):not(.unread)")
            h.post("/v1/notifications", json={
                "to": {"users": ["maria"]}, "title": "user_17 and 41 others liked your post",
                "body": "“Sunset over the harbour”", "category": "social"})
            demo.wait_for_selector("#list li:nth-child(4)")
            time.sleep(0.3)
            demo.screenshot(path=str(a.out / "demo.png"))
            browser.close()
        traffic.join(a.seconds + 30)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
    print(f"wrote {a.out / 'dashboard.png'} and {a.out / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
