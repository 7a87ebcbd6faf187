"""Headless Debian chromium driven by playwright, and OHIF as the tests open it.

`/usr/bin/chromium` (scripts/bootstrap.sh installs it) with SwiftShader for WebGL; playwright's
own browser builds are never downloaded. OHIF's viewport is reached through `window.services`
(the cornerstone viewport's `getCurrentImageId` and `worldToCanvas`).
"""

from __future__ import annotations

import time
from typing import Any

import playwright.sync_api as playwright  # installed by `make install`

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
VIEWPORT = {"width": 1400, "height": 900}
LOAD_TIMEOUT_MS = 120_000

VIEWPORT_JS = """() => {
  const s = window.services;
  const vp = s.cornerstoneViewportService.getCornerstoneViewport(s.viewportGridService.getActiveViewportId());
  if (!vp || !vp.getCurrentImageId()) return null;  // between display sets
  const r = vp.canvas.getBoundingClientRect();
  return {imageId: vp.getCurrentImageId(), rect: [r.x, r.y, r.width, r.height]};
}"""
PROJECT_JS = """(points) => {
  const s = window.services;
  const vp = s.cornerstoneViewportService.getCornerstoneViewport(s.viewportGridService.getActiveViewportId());
  return points.map(p => vp.worldToCanvas(p));
}"""


def launch(pw: Any) -> Any:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_ohif(browser: Any, url: str, errors: list[str]) -> Any:
    """A new page (fresh context) on an OHIF URL, loaded, with the first-visit overlays dismissed;
    uncaught page errors are appended to `errors`."""
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("canvas", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function("() => window.services && window.services.viewportGridService.getActiveViewportId()",
                           timeout=LOAD_TIMEOUT_MS)
    # OHIF's first-visit tour and its investigational-use banner cover the viewport: dismiss both
    for label in ("Skip all", "Confirm and hide"):
        try:
            page.get_by_text(label).click(timeout=15_000)
        except playwright.TimeoutError:
            pass  # not shown this time (remembered in local storage, or another version)
    return page


def current_sop(page: Any) -> tuple[str, list[float]]:
    """SOP Instance UID shown in the active viewport, and the canvas rectangle (page pixels)."""
    info = page.evaluate(VIEWPORT_JS)
    if info is None:
        return "", []
    return str(info["imageId"]).split("/instances/")[1].split("/")[0], info["rect"]


def wait_for_sop(page: Any, wanted: set[str], timeout_s: float = 60.0) -> tuple[str, list[float]]:
    deadline = time.monotonic() + timeout_s
    while True:
        sop, rect = current_sop(page)
        if sop in wanted or time.monotonic() > deadline:
            return sop, rect
        time.sleep(0.5)
