"""The admin page in a real browser (docs/operations.md, "Admin page and stats").

Run by .ci/admin-page, which installs Debian's chromium and Playwright first. Starts a
small upstream (a thread of this script) and a meshlet in a temp dir with two static
destinations: `inventory` (the upstream) and `ledger` (a port nothing listens on, so its
breaker opens). Sends traffic with curl through the outbound listener, then in headless
chromium checks that the page loads with no console error and no failed request, shows
`inventory` with rps > 0, shows `ledger`'s breaker `open` after failing calls, and shows
"disconnected" once meshlet is stopped. Every wait is on the DOM with a deadline; no
fixed sleeps.

Env: MESHLET_BIN (default target/debug/meshlet); ADMIN_PAGE_SCREENSHOT=1 saves
docs/admin-page.png (1280x800).
"""

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHLET = os.environ.get("MESHLET_BIN", os.path.join(ROOT, "target/debug/meshlet"))
SCREENSHOT = os.path.join(ROOT, "docs/admin-page.png")
WAIT_MS = 10_000


def fail(message):
    print(f"admin-page: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Items(http.server.BaseHTTPRequestHandler):
    """The upstream: a small JSON answer to anything."""

    def do_GET(self):
        body = b'{"items":[1,2,3]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def curl(outbound, url):
    """One request through meshlet's outbound listener, HTTP_PROXY style; its status."""
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
         "-x", f"http://127.0.0.1:{outbound}", url],
        capture_output=True, text=True, check=False,
    )
    return int(done.stdout or 0)


def wait_ready(telemetry, meshlet, log):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if meshlet.poll() is not None:
            fail(f"meshlet exited with {meshlet.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{telemetry}/healthz/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    fail(f"meshlet not ready within 20 s:\n{log()}")


def main():
    if not os.access(MESHLET, os.X_OK):
        fail(f"no meshlet binary at {MESHLET} (cargo build, or set MESHLET_BIN)")
    chromium = shutil.which("chromium")
    if not chromium:
        fail("chromium not found")

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Items)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    dead = free_port()
    ports = {name: free_port() for name in ("outbound", "inbound", "api", "telemetry")}
    work = tempfile.mkdtemp(prefix="admin-page-")
    config = os.path.join(work, "meshlet.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(
            "service: {name: orders}\n"
            "workers: 1\n"
            f"listen: {{outbound: 127.0.0.1:{ports['outbound']}, inbound: 127.0.0.1:{ports['inbound']},"
            f" api: 127.0.0.1:{ports['api']}, telemetry: 127.0.0.1:{ports['telemetry']}}}\n"
            "registry:\n"
            "  static:\n"
            f"    inventory: [\"127.0.0.1:{upstream.server_address[1]}\"]\n"
            f"    ledger: [\"127.0.0.1:{dead}\"]\n"
            "defaults: {retry: {attempts: 1}, breaker: {failures: 2, open_for: 30s}}\n"
            # The hub on this one meshlet (no Redis), so the page shows its card.
            "realtime: {path: /ws, auth: {secret: \"admin-page-check-secret-0123456789\"}}\n"
        )
    log_path = os.path.join(work, "meshlet.log")
    log_file = open(log_path, "w", encoding="utf-8")
    meshlet = subprocess.Popen([MESHLET, "run", "--config", config],
                               stdout=log_file, stderr=subprocess.STDOUT)

    def log():
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-3000:]

    stop_traffic = threading.Event()
    try:
        wait_ready(ports["telemetry"], meshlet, log)
        outbound = ports["outbound"]
        for _ in range(20):
            status = curl(outbound, "http://inventory/items")
            if status != 200:
                fail(f"GET http://inventory/items through meshlet answered {status}")

        def steady_traffic():
            # A few requests a second, so the page's rates stay above 0 while it is watched.
            while not stop_traffic.wait(0.1):
                curl(outbound, "http://inventory/items")

        threading.Thread(target=steady_traffic, daemon=True).start()
        check_in_browser(chromium, ports["api"], outbound, meshlet)
        print("admin-page: ok (page loads clean, live rps, breaker open shown, disconnect shown)")
    finally:
        stop_traffic.set()
        if meshlet.poll() is None:
            meshlet.send_signal(signal.SIGTERM)
            try:
                meshlet.wait(timeout=10)
            except subprocess.TimeoutExpired:
                meshlet.kill()
        log_file.close()
        upstream.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def check_in_browser(chromium, api, outbound, meshlet):
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            # As root chromium needs --no-sandbox; the rest keep it off the (closed) network.
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))

        def wait_for(script, what):
            # Polls the DOM with page.evaluate: wait_for_function compiles its predicate
            # with eval, which the page's content-security-policy (rightly) refuses.
            deadline = time.monotonic() + WAIT_MS / 1000
            while not page.evaluate(script):
                if time.monotonic() > deadline:
                    status = page.inner_text("#status")
                    fail(f"{what} not shown within {WAIT_MS} ms; status {status!r}; page says:\n"
                         f"{page.inner_text('main')}\n" + "\n".join(problems))
                page.wait_for_timeout(50)

        answer = page.goto(f"http://127.0.0.1:{api}/")
        if answer is None or answer.status != 200:
            fail(f"GET / answered {answer and answer.status}")
        csp = answer.headers.get("content-security-policy", "")
        if "default-src 'none'" not in csp:
            fail(f"no strict content-security-policy: {csp!r}")
        wait_for("document.getElementById('status').textContent === 'live'", "the live status")
        wait_for(
            """(() => {
                const row = document.querySelector('tr[data-destination="inventory"][data-direction="outbound"]');
                return row && parseFloat(row.querySelector('[data-field="rps"]').textContent) > 0;
            })()""",
            "inventory with rps > 0",
        )
        for expected in (502, 502, 503):
            status = curl(outbound, "http://ledger/pay")
            if status != expected:
                fail(f"GET http://ledger/pay answered {status}, expected {expected}")
        wait_for(
            """(() => {
                const cell = document.querySelector('tr[data-destination="ledger"] [data-field="breaker"]');
                return cell && cell.dataset.state === 'open' && cell.textContent === 'open';
            })()""",
            "ledger's breaker open",
        )
        wait_for("document.querySelector('#errors tr[data-code=\"circuit_open\"]') !== null",
                 "the circuit_open error in recent errors")
        wait_for("!document.getElementById('hub').hidden && document.getElementById('events').hidden"
                 " && document.querySelector('#hub [data-field=\"connections\"]') !== null",
                 "the hub's card (and no events card: events are off)")
        if problems:
            fail("the page had errors:\n  " + "\n  ".join(problems))
        if os.environ.get("ADMIN_PAGE_SCREENSHOT") == "1":
            page.screenshot(path=SCREENSHOT)
            print(f"admin-page: screenshot saved to {os.path.relpath(SCREENSHOT, ROOT)}")

        # The sidecar goes away: the page must say so (its failing polls are expected now).
        meshlet.send_signal(signal.SIGTERM)
        meshlet.wait(timeout=30)
        wait_for("document.getElementById('status').textContent === 'disconnected'"
                 " && document.body.classList.contains('down')", "the disconnected state")
        browser.close()


if __name__ == "__main__":
    main()
