"""Host pages for the ``<tidings-inbox>`` browser tests: a plain HTML page, a
React page and a Vue page, each on its own origin (a static site on another loopback port),
loading ``/tidings-inbox.js`` from the server under test and talking to it
across origins (CORS, tidings/api/cors.py).

React and Vue come from the npm registry (tests/npm.py), installed once into a
cache directory: react and react-dom 18, whose UMD builds need no bundler, and
Vue 3's global build with its template compiler.
"""

from __future__ import annotations

import html
import http.server
import json
import shutil
import threading
from pathlib import Path

from tests.browser.conftest import _free_port
from tests.npm import npm_install

REACT_VERSION = "18.3.1"
VUE_VERSION = "3.5.13"

_PLAIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme</title>
<script src="{server}/tidings-inbox.js"></script>
<style>
  body {{ margin: 0; font-family: system-ui, sans-serif; background: {bg}; color: {fg}; }}
  header {{ display: flex; align-items: center; justify-content: space-between;
           padding: 8px 24px; border-bottom: 1px solid #8884; }}
  .brand {{ font-weight: 700; font-size: 18px; }}
</style></head>
<body>
<header><span class="brand">Acme</span>
<tidings-inbox url="{server}" {attrs}></tidings-inbox></header>
<main><p id="out"></p><button id="after">after</button></main>
</body></html>
"""

_REACT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme (React)</title>
<script src="{page}react.js"></script>
<script src="{page}react-dom.js"></script>
<script src="{server}/tidings-inbox.js"></script>
</head>
<body><div id="root"></div>
<script>
const h = React.createElement;
const server = {server_json}, token = {token_json};
function Bell(props) {{
  // getToken is a property, not an attribute: React 18 sets it through a ref.
  const ref = React.useRef(null);
  React.useEffect(() => {{
    const el = ref.current;
    el.getToken = () => Promise.resolve(token);
    const onClick = (e) => {{ e.preventDefault(); props.onOpen(e.detail.notification); }};
    el.addEventListener("tidings-click", onClick);
    return () => el.removeEventListener("tidings-click", onClick);
  }}, []);
  return h("tidings-inbox", {{ ref, url: server, locale: props.locale }});
}}
function App() {{
  const [opened, setOpened] = React.useState(null);
  const [locale, setLocale] = React.useState("en");
  return h("div", null,
    h("header", {{ style: {{ display: "flex", justifyContent: "space-between" }} }},
      h("b", null, "Acme"), h(Bell, {{ locale, onOpen: setOpened }})),
    h("p", {{ id: "opened" }}, opened ? "opened: " + opened.title : "nothing opened"),
    h("button", {{ id: "french", onClick: () => setLocale("fr") }}, "français"));
}}
ReactDOM.createRoot(document.getElementById("root")).render(h(App));
</script>
</body></html>
"""


_VUE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme (Vue)</title>
<script src="{page}vue.js"></script>
<script src="{server}/tidings-inbox.js"></script>
</head>
<body><div id="app"></div>
<script>
const app = Vue.createApp({{
  setup() {{
    const opened = Vue.ref("nothing opened");
    const token = {token_json};
    return {{
      server: {server_json},
      opened,
      getToken: () => Promise.resolve(token),   // a property, bound as one below
      onClick: (e) => {{
        e.preventDefault();
        opened.value = "opened: " + e.detail.notification.title;
      }},
    }};
  }},
  template: `<header><b>Acme</b>
    <tidings-inbox :url="server" :getToken.prop="getToken" @tidings-click="onClick" />
  </header><p id="opened">{{{{ opened }}}}</p>`,
}});
app.config.compilerOptions.isCustomElement = (tag) => tag === "tidings-inbox";
app.mount("#app");
</script>
</body></html>
"""


def plain_page(server: str, attrs: str = "", dark: bool = False) -> str:
    return _PLAIN.format(server=html.escape(server), attrs=attrs,
                         bg="#0d1117" if dark else "#fafbfc", fg="#e6edf3" if dark else "#1f2328")


def attr(name: str, value) -> str:
    """One HTML attribute, JSON-encoded unless it is a string."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f'{name}="{html.escape(text)}"'


class Site:
    """A static site on its own loopback port: another origin than tidings'."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self._pages = 0

    def add(self, name: str, body: str) -> str:
        self._pages += 1
        name = f"{self._pages}-{name}"
        (self.root / name).write_text(body)
        return f"{self.origin}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def open_plain(context, site: Site, server, attrs: str = "", dark: bool = False):
    """A page of ``site`` with one <tidings-inbox> in its header."""
    page = context.new_page()
    page.goto(site.add("plain.html", plain_page(server.url, attrs, dark)))
    return page


def react_umd() -> Path:
    """node_modules with react and react-dom, from the npm registry."""
    return npm_install(f"react-{REACT_VERSION}", f"react@{REACT_VERSION}",
                       f"react-dom@{REACT_VERSION}")


def open_react(context, site: Site, server, token: str):
    umd = react_umd()
    for name, src in (("react.js", umd / "react" / "umd" / "react.production.min.js"),
                      ("react-dom.js", umd / "react-dom" / "umd" / "react-dom.production.min.js")):
        if not (site.root / name).exists():
            shutil.copyfile(src, site.root / name)
    page = context.new_page()
    page.goto(site.add("react.html", _REACT.format(
        page=site.origin + "/", server=html.escape(server.url),
        server_json=json.dumps(server.url), token_json=json.dumps(token))))
    return page


def open_vue(context, site: Site, server, token: str):
    vue = npm_install(f"vue-{VUE_VERSION}", f"vue@{VUE_VERSION}")
    if not (site.root / "vue.js").exists():
        shutil.copyfile(vue / "vue" / "dist" / "vue.global.prod.js", site.root / "vue.js")
    page = context.new_page()
    page.goto(site.add("vue.html", _VUE.format(
        page=site.origin + "/", server=html.escape(server.url),
        server_json=json.dumps(server.url), token_json=json.dumps(token))))
    return page
