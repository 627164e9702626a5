"""The npm package of the browser side (package.json at the repository root):
a frontend installs it from the repository, imports tidings.js and the
<tidings-inbox> element, and type-checks against their declarations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.npm import npm, npm_install

ROOT = Path(__file__).resolve().parents[2]

CONSUMER = """
import Tidings = require("tidings-browser");
import TidingsInbox = require("tidings-browser/inbox");

const client: Tidings.Client = Tidings.connect({
  url: "https://notify.example", getToken: async () => "token",
  device: "kiosk-3", deviceLabel: "Lobby kiosk" });
console.log(client.device.length, client.deviceLabel.trim());
client.on("notification", (n, ev) => console.log(n.title ?? "", ev.group?.count));
client.on("counts", ({ unread }) => unread.toFixed());
client.preferences().then((p) => p.quiet_hours?.tz);
client.preferences({ ifNoneMatch: "\\"x\\"" }).then((p) => p?.etag.trim());
client.setPreferences({}, { ifMatch: "*" }).then((p) => p.etag.trim());
client.categories({ ifNoneMatch: undefined }).then((c) => c?.categories.length);
const inbox = document.createElement("tidings-inbox");
inbox.getToken = () => Promise.resolve("token");
inbox.addEventListener("tidings-click", (e) => {
  e.preventDefault();
  console.log(e.detail.notification.url, e.detail.group?.actors);
});
const strings: TidingsInbox.Strings = {
  bell: "Bell", others: { one: "{name} +1", other: "{name} +{n}" }, category_ci: "Builds" };
inbox.strings = strings;
const tab: TidingsInbox.Tab = { label: "Builds", category: "ci" };
console.log(tab, inbox.client?.cursor());
"""

WRONG = """
import Tidings = require("tidings-browser");
Tidings.connect({ url: "https://notify.example" }).on("counts", (c) => c.unread.toUpperCase());
"""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_package_installs_imports_and_type_checks(tmp_path):
    packed = _run([npm(), "pack", str(ROOT), "--pack-destination", str(tmp_path), "--json"],
                  tmp_path)
    assert packed.returncode == 0, packed.stderr
    files = {f["path"] for f in json.loads(packed.stdout)[0]["files"]}
    static = "tidings/dashboard/static/"
    assert {static + n for n in ("tidings.js", "tidings.d.ts", "tidings-inbox.js",
                                 "tidings-inbox.d.ts", "tidings-inbox-ui.js",
                                 "tidings-inbox-view.js")} <= files
    assert not any(f.endswith(".py") for f in files)   # the browser side only

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true}')
    tarball = json.loads(packed.stdout)[0]["filename"]
    installed = _run([npm(), "install", "--no-audit", "--no-fund", "--no-package-lock",
                      str(tmp_path / tarball)], app)
    assert installed.returncode == 0, installed.stderr

    # a server-side render imports both: the client works, the element is null
    node = _run(["node", "-e", 'const T = require("tidings-browser");'
                 'console.log(typeof T.connect, require("tidings-browser/inbox"))'], app)
    assert node.stdout.strip() == "function null", node.stderr

    tsc = str(npm_install("typescript-5", "typescript@5") / ".bin" / "tsc")
    args = ["--noEmit", "--strict", "--module", "node16", "--moduleResolution", "node16",
            "--target", "es2020", "--lib", "es2020,dom"]
    (app / "consumer.ts").write_text(CONSUMER)
    checked = _run([tsc, *args, "consumer.ts"], app)
    assert checked.returncode == 0, checked.stdout
    (app / "wrong.ts").write_text(WRONG)
    checked = _run([tsc, *args, "wrong.ts"], app)
    assert "Property 'toUpperCase' does not exist on type 'number'" in checked.stdout
