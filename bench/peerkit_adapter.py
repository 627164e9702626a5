"""The peer kit's ``loadgen.py``, run against tidings (the kit's TIDINGS template, filled in).

This file is run by the kit's own interpreter (its venv, inside its network
namespace), never imported by ``bench``:

    peerctl.sh run python bench/peerkit_adapter.py --kit KIT --config CONF.json -- \\
        --pid PID --out OUT.jsonl [other loadgen.py options]

CONF.json (written by ``bench/peers.py``): ``{"port", "api_key", "users",
"tokens", "mode"}`` where mode is ``fanout`` (users follow the topic, publish
to the topic) or ``broadcast`` (publish ``{"all": true}``).  The adapter
subscribes the users to the topic before ``loadgen.py`` starts measuring,
then hands over to it unchanged: same client, same counting, same CPU and RSS
sampling as for every peer.
"""

import argparse
import asyncio
import json
import os
import sys

# run as a script, this file's folder comes first on sys.path: keep bench's
# modules from shadowing anything the kit imports
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(__file__)]


def make_adapter(peerlib, conf: dict):
    class Tidings:
        """WebSocket ``/v1/me/stream``; auth as the first message; hello confirms it.

        Users are subscribed to the topic over HTTP beforehand, so ``hello``
        (sent after the stream joined the user's topics) is the confirmation.
        A frame holds one event or a JSON array of events: ``feed`` counts the
        notification events in it.
        """

        name = "tidings"
        protocols = ()

        def __init__(self):
            self.port = conf["port"]
            self._tokens = iter(conf["tokens"])
            self._to = {"topic": None} if conf["mode"] == "fanout" else {"all": True}

        def ws_url(self, ch):
            return f"ws://127.0.0.1:{self.port}/v1/me/stream"

        async def handshake(self, ws, ch):
            await ws.send_str(json.dumps({"type": "auth", "token": next(self._tokens)}))
            while True:
                data = await peerlib._recv(ws)
                if '"type":"hello"' in data:
                    return

        def feed(self, ws, msg):
            return msg.data.count('"type":"notification"')

        async def open_publisher(self, session):
            headers = {"Authorization": f"Bearer {conf['api_key']}",
                       "Content-Type": "application/json"}
            url = f"http://127.0.0.1:{self.port}/v1/notifications"

            def req(ch, payload):
                to = {"topic": ch} if "topic" in self._to else self._to
                body = json.dumps({"to": to, "title": "bench", "body": payload}).encode()
                return "POST", url, {"data": body, "headers": headers}

            return peerlib._HttpPublisher(session, req)

    return Tidings()


async def subscribe(conf: dict, topic: str) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {conf['api_key']}"}
    url = f"http://127.0.0.1:{conf['port']}/v1/topics/{topic}/subscribers"
    users = conf["users"]
    async with aiohttp.ClientSession(headers=headers) as s:
        for i in range(0, len(users), 10_000):
            async with s.post(url, json={"users": users[i:i + 10_000]}) as r:
                if r.status >= 300:
                    raise RuntimeError(f"subscribe failed {r.status}: {await r.text()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kit", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--channel", default="bench")
    a, rest = ap.parse_known_args()
    rest = [x for x in rest if x != "--"]
    with open(a.config) as f:
        conf = json.load(f)
    sys.path.insert(0, a.kit)
    import peerlib

    peerlib.PEERS["tidings"] = make_adapter(peerlib, conf)
    if conf["mode"] == "fanout":
        asyncio.run(subscribe(conf, a.channel))
    import loadgen  # noqa: E402 - the kit's, after the adapter is registered

    sys.argv = ["loadgen.py", "tidings", "--channel", a.channel, *rest]
    loadgen.main()


if __name__ == "__main__":
    main()
