"""Open an HTML page in headless Chromium and report what a reader would see: console errors, whether each
image loaded and is visible and not blank, and a screenshot.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so nothing listens on a port and no websocket
package is needed. Used by the report tests and to take the screenshot in ``docs/``; Debian's
``chromium`` package provides the browser (``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "PageCheck", "find_chromium", "inspect_page"]

#: Headless, sandbox-free (containers run as root), no GPU, no network chatter, no first-run UI.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
)

# Per image: loaded, its natural and rendered size, and the spread of its pixel values (0 = blank), read
# by drawing it on a canvas (data: URIs are same-origin, so the canvas is readable).
_IMAGES_JS = """
(() => Array.from(document.images).map((img) => {
  const r = img.getBoundingClientRect();
  const style = getComputedStyle(img);
  let spread = -1;
  if (img.complete && img.naturalWidth > 0) {
    const c = document.createElement('canvas');
    c.width = Math.min(img.naturalWidth, 256); c.height = Math.min(img.naturalHeight, 256);
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0, c.width, c.height);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let lo = 255, hi = 0;
    for (let i = 0; i < d.length; i += 4) {
      const v = (d[i] + d[i + 1] + d[i + 2]) / 3; lo = Math.min(lo, v); hi = Math.max(hi, v);
    }
    spread = hi - lo;
  }
  return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
          naturalHeight: img.naturalHeight, width: r.width, height: r.height,
          visible: style.visibility !== 'hidden' && style.display !== 'none' && r.width > 0 && r.height > 0,
          spread: spread};
}))()
"""


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What headless Chromium saw on a page.

    Attributes:
        title: the document title.
        console_errors: console errors, uncaught exceptions and failed loads, one line each.
        images: per ``<img>``: alt, complete, natural/rendered size, visible, pixel spread (0 = blank).
        screenshot: PNG of the page's first ``height`` pixels, or None.
        text: the page's visible text.
    """

    title: str
    console_errors: list[str]
    images: list[dict[str, Any]]
    screenshot: bytes | None = None
    text: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        """Images that did not load, are not displayed, or are a single flat colour."""
        return [
            i
            for i in self.images
            if not (i["complete"] and i["naturalWidth"] > 0 and i["visible"] and i["spread"] > 0)
        ]


class _DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, timeout: float):
        self.proc, self.out, self.inp, self.timeout = proc, to_browser, from_browser, timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("headless Chromium did not answer in time")
            ready, _, _ = select.select([self.inp], [], [], left)
            if ready:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"headless Chromium closed its pipe (exit status {self.proc.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and return its result; events arriving meanwhile are kept in :attr:`events`."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        """Wait for an event (or return one already received)."""
        deadline = time.monotonic() + self.timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)


def _errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed network loads among DevTools events."""
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(
                " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed":
            out.append(f"network: {params.get('errorText')}")
    return out


def _spawn(chromium: str, profile: str) -> tuple[subprocess.Popen, int, int]:
    """Start Chromium with its debugging pipe on descriptors 3 (commands in) and 4 (replies out)."""
    cmd_r, cmd_w = os.pipe()
    out_r, out_w = os.pipe()

    def wire() -> None:
        # In the child, before exec: copy the pipe ends to 3 and 4 (dup2 makes them inheritable), whatever
        # numbers they had. close_fds=False, because closing runs after this hook and would close 3 and 4;
        # every other descriptor of ours is non-inheritable and closes at exec.
        a, b = os.dup(cmd_r), os.dup(out_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=False,
        preexec_fn=wire,
    )
    os.close(cmd_r)
    os.close(out_w)
    return proc, cmd_w, out_r


def inspect_page(
    page: str | os.PathLike,
    *,
    chromium: str | None = None,
    width: int = 1280,
    height: int = 1600,
    screenshot: bool = True,
    full_page: bool = False,
    timeout: float = 60.0,
) -> PageCheck:
    """Load a local HTML file in a fresh headless Chromium profile and report what it saw.

    The screenshot shows a ``width`` x ``height`` window, or the whole page with ``full_page``.

    Raises:
        FileNotFoundError: no page, or no Chromium (``apt-get install -y chromium``).
        TimeoutError / RuntimeError: the browser did not load the page.
    """
    page = Path(page).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such page")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found on PATH (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="medvl3d-chromium-") as profile:
        proc, to_browser, from_browser = _spawn(chromium, profile)
        tools = _DevTools(proc, to_browser, from_browser, timeout)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable", session=session)
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            tools.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
            tools.send("Page.navigate", {"url": page.as_uri()}, session=session)
            tools.wait_for("Page.loadEventFired")

            def evaluate(expr: str) -> Any:
                res = tools.send(
                    "Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session
                )
                return res.get("result", {}).get("value")

            images = evaluate(_IMAGES_JS) or []
            title, text = evaluate("document.title") or "", evaluate("document.body.innerText") or ""
            shot = None
            if screenshot:
                import base64

                if full_page:
                    size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                    metrics["height"] = int(size["height"]) + 1
                    tools.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
                data = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
                shot = base64.b64decode(data)
            errors = _errors(tools.events)
            events = sorted({str(e.get("method")) for e in tools.events})
            try:
                tools.send("Browser.close")
            except (RuntimeError, TimeoutError):
                pass
        finally:
            for fd in (to_browser, from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return PageCheck(title, errors, images, shot, text, events)


def main(argv: list[str] | None = None) -> int:
    """``python -m medvl3d.viz.browser PAGE -o SHOT.png``: screenshot a page, print what Chromium saw."""
    import argparse

    from medvl3d.atomic import atomic_write_bytes
    from medvl3d.viz.html import check_output_path

    parser = argparse.ArgumentParser(prog="python -m medvl3d.viz.browser", description=main.__doc__)
    parser.add_argument("page", help="a local HTML file")
    parser.add_argument("-o", "--out", required=True, help="the PNG screenshot to write")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--full-page", action="store_true", help="the whole page, not the first window")
    args = parser.parse_args(argv)
    try:
        check_output_path(args.out, "--out", [args.page])
        seen = inspect_page(args.page, width=args.width, height=args.height, full_page=args.full_page)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    assert seen.screenshot is not None
    atomic_write_bytes(args.out, seen.screenshot)
    print(
        f"{args.out}: {len(seen.images)} images ({len(seen.broken_images)} broken), "
        f"{len(seen.console_errors)} console errors"
    )
    return 0 if not seen.console_errors and not seen.broken_images else 1


if __name__ == "__main__":
    raise SystemExit(main())
