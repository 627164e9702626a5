"""Your app's side of a browser page: it serves the page and mints the user's
token with its API key, which never reaches the browser."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tidings.client import Client

tidings = Client("http://127.0.0.1:8080", api_key=os.environ["API_KEY"])
PAGE = (Path(__file__).parent / "page.html").read_bytes()


class App(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/api/tidings-token":
            user = "demo-user"  # in a real app: the user of this request's session
            body, kind = tidings.mint_token(user, ttl=600).encode(), "text/plain"
        else:
            body, kind = PAGE, "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "3000"))), App).serve_forever()
