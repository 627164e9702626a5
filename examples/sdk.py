"""Mint a user token, open that user's stream, and publish to it with the API key."""

import asyncio
import os

from tidings.client import AsyncClient, Subscriber

URL = "http://127.0.0.1:8080"
API_KEY = os.environ["API_KEY"]


async def main() -> None:
    async with AsyncClient(URL, api_key=API_KEY) as tidings:
        token = await tidings.mint_token("alice", ttl=3600)  # what a device would be given
        async with Subscriber(URL, token=token) as sub:
            async for event in sub:  # reconnects, resumes from its cursor, drops duplicates
                print(event["type"], event.get("notification", ""))
                if event["type"] == "hello":  # the stream is live: publish to it
                    await tidings.publish(to={"users": ["alice"]},
                                          title="user_17 replied to your comment")
                elif event["type"] == "notification":
                    break  # a real app keeps watching


asyncio.run(main())
