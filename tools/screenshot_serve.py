"""The README's picture of `lip-jax serve` (docs/serve.png): the page with a result, taken by the
browser the tests use (Debian's Chromium through Playwright), on the demo's trained stage 2.

    python tools/screenshot_serve.py --ckpt runs/demo/stage2 [--config configs/shapes_demo.py:stage2] \
        [--out docs/serve.png]

Starts `lip-jax serve` through the real CLI, picks an example scene (its object's box comes as the
mask), paints a stroke over the object too, asks for another object than the one under the hole,
four candidates, presses Inpaint, waits for the result and screenshots the page; then Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="the demo's stage-2 workdir")
    ap.add_argument("--config", help="its config, where the checkpoint records none")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "serve.png"))
    ap.add_argument("--scene", type=int, default=1, help="which example scene (0-5)")
    ap.add_argument("--text", default="a large red circle in the center")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lip_jax.cli", "serve", "--ckpt", args.ckpt, "--port", str(port)]
    cmd += ["--config", args.config] if args.config else []
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()

    def echo():
        for line in server.stderr:
            sys.stderr.write(line)
            if "serving on" in line:
                ready.set()
        ready.set()

    threading.Thread(target=echo, daemon=True).start()
    try:
        if not ready.wait(300) or server.poll() is not None:
            return 1
        shoot(f"http://127.0.0.1:{port}/", args)
    finally:
        server.send_signal(signal.SIGINT)
        rc = server.wait(60)
    print(f"wrote {args.out} (server exit {rc})")
    return 0


def shoot(url: str, args) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#editor").wait_for(timeout=60_000)
        page.locator("#examples button.thumbnail-item").nth(args.scene).click()
        page.locator("#mask-file a").first.wait_for(timeout=30_000)  # the scene's hole arrived
        page.wait_for_timeout(1000)
        editor = page.locator("#editor")
        editor.locator("button[aria-label=Brush]").click()
        box = editor.locator("canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 40, cy + 30)
        page.mouse.down()
        for i in range(21):
            page.mouse.move(cx - 40 + 4 * i, cy + 30 - 2 * i)
        page.mouse.up()
        page.locator("#caption textarea").fill(args.text)
        page.locator("#sampling").get_by_text("Sampling").click()
        page.locator("#num-candidates input[type=number]").fill("4")
        page.locator("#num-candidates input[type=number]").press("Enter")
        page.click("#inpaint")
        page.locator("#download a").first.wait_for(timeout=300_000)
        page.wait_for_timeout(1500)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
