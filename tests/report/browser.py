"""A page measured in a real headless Chromium, over the DevTools protocol on a pipe (stdlib only).

``measure_page(path)`` loads a local HTML file in a 1280 x 800 window and returns what a person
would meet: whether the page scrolls sideways, the outermost elements wider than the window
(and whether each sits in a box that scrolls it), and whether every image loaded.

Chromium reads NUL-terminated JSON commands on its fd 3 and writes replies and events on fd 4
(``--remote-debugging-pipe``): no port, no websocket, no extra package. Debian: ``apt-get install
chromium``. :func:`find_chromium` is None where there is none (the tests then skip).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    # No --hide-scrollbars: a page taller than the window gets a classic 15-px scrollbar, so the usable
    # width is documentElement.clientWidth (1265 of 1280), as on a Linux desktop.
]

# Runs in the page; returns a JSON-serialisable dict.
MEASURE_JS = r"""
(async () => {
  await document.fonts.ready;
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const de = document.documentElement;
  const vw = de.clientWidth;  // the window without its vertical scrollbar
  const scrolledByAncestor = (el) => {
    for (let a = el.parentElement; a && a !== document.body && a !== de; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') return true;  // auto/scroll/hidden: held in a box
    }
    return false;
  };
  const offenders = [];
  const seen = new Set();
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right + window.scrollX > vw + 0.5) {
      seen.add(el);
      let inner = false;  // only the outermost offender of a subtree
      for (let a = el.parentElement; a; a = a.parentElement) if (seen.has(a)) { inner = true; break; }
      if (inner) continue;
      offenders.push({tag: el.tagName.toLowerCase(), cls: el.className && String(el.className),
                      right: Math.round(r.right + window.scrollX), width: Math.round(r.width),
                      contained: scrolledByAncestor(el)});
    }
  }
  const images = imgs.map(i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
                                 width: Math.round(i.getBoundingClientRect().width)}));
  return {
    clientWidth: de.clientWidth, scrollWidth: de.scrollWidth,
    pageOverflowsX: de.scrollWidth > de.clientWidth,
    uncontained: offenders.filter(o => !o.contained).slice(0, 20),
    contained: offenders.filter(o => o.contained).slice(0, 20),
    tables: document.querySelectorAll('table').length,
    images: images,
    allImagesOk: images.every(i => i.complete && i.naturalWidth > 0),
  };
})()
"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """A Chromium process and its DevTools pipe."""

    def __init__(self, chromium: str, flags: list[str], timeout: float) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="resgrad-chromium-")
        to_r, to_w = os.pipe()  # our commands -> Chromium's fd 3
        from_r, from_w = os.pipe()  # Chromium's fd 4 -> us
        # The child's ends at fds >= 10, so that putting them on 3 and 4 cannot clobber one another.
        c3 = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
        c4 = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_r)
        os.close(from_w)

        def child_fds() -> None:
            os.dup2(c3, 3)  # dup2 makes 3 and 4 inheritable; everything else of ours is close-on-exec
            os.dup2(c4, 4)

        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={self.profile}", "--remote-debugging-pipe"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,  # not pass_fds=(3, 4): that would touch *our* fds 3 and 4
            close_fds=False,
        )
        os.close(c3)
        os.close(c4)
        self.w, self.r = to_w, from_r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from Chromium within {self.timeout:g} s")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed its pipe (exit code {self.proc.poll()})")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        for i, m in enumerate(self.events):
            if m.get("method") == method and m.get("sessionId") == session:
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass  # it may be gone already; it is killed below if not
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        shutil.rmtree(self.profile, ignore_errors=True)


def measure_page(html: str | os.PathLike[str], width: int = 1280, height: int = 800, timeout: float = 60.0) -> dict:
    """Load the local file ``html`` in a ``width`` x ``height`` window and measure it (see :data:`MEASURE_JS`)."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium here (Debian: apt-get install chromium)")
    cdp = _Pipe(chromium, [f"--window-size={width},{height}"], timeout)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.call("Page.enable", session=sid)
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        cdp.call("Page.navigate", {"url": Path(html).resolve().as_uri()}, session=sid)
        cdp.wait_event("Page.loadEventFired", session=sid)
        result = cdp.call(
            "Runtime.evaluate", {"expression": MEASURE_JS, "returnByValue": True, "awaitPromise": True}, session=sid
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"the measuring script failed: {result['exceptionDetails']}")
        return result["result"]["value"]
    finally:
        cdp.close()
