"""The lab in a real headless Chromium through `tokenlab serve`, and the HTML export opened in it."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import struct
import subprocess
import urllib.request
import zlib
from pathlib import Path

import aiohttp
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (scripts/test installs Debian's chromium when it can)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, header = 8, b"", None
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks += body
        offset += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(chunks)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(b for i in range(0, stride, channels) for b in line[i:i + 3]))
        previous = line
    return width, height, rows


def heat_pixels(png: bytes, right: float, bottom: float) -> int:
    """Pixels in the top-left part of the page coloured like heat backgrounds (saturated green/yellow/red)."""
    width, height, rows = png_pixels(png)
    count = 0
    for row in rows[: int(height * bottom)]:
        for x in range(0, int(width * right) * 3, 3):
            r, g, b = row[x], row[x + 1], row[x + 2]
            if (g > 120 and g > r + 40 and g > b + 40) or (r > 150 and g > 110 and b < 70) or (r > 150 and g < 80 and b < 80):
                count += 1
    return count


class Browser:
    """Headless Chromium driven over the DevTools protocol (page load, console errors, screenshots)."""

    def __init__(self, user_data: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_data}", f"--remote-debugging-port={self.port}", "--window-size=1200,800",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.errors: list[str] = []

    async def __aenter__(self) -> Browser:
        self.http = aiohttp.ClientSession()
        for _ in range(200):
            try:
                pages = await (await self.http.get(f"http://127.0.0.1:{self.port}/json/list")).json()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        page = next(p for p in pages if p["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.next_id = 0
        await self.call("Runtime.enable")
        await self.call("Log.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()
        self.process.terminate()
        self.process.wait(10)

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(message["params"]["exceptionDetails"])[:300])
            elif message.get("method") == "Log.entryAdded" and message["params"]["entry"]["level"] == "error":
                self.errors.append(message["params"]["entry"]["text"])
            if message.get("id") == my_id:
                return message.get("result", {})

    async def screenshot(self, scale: float = 1.0, width: int = 1200, height: int = 800) -> bytes:
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": scale}
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png", clip=clip))["data"])


def test_serve_shows_the_lab_in_chromium(model_path, tmp_path) -> None:
    from test_serve_security import serving

    with serving(colour=True) as served:
        page = urllib.request.urlopen(served.url, timeout=10).read().decode()
        assert "tokenlab" in page and "textual" in page.lower()

        async def look() -> int:
            async with Browser(tmp_path / "chromium") as browser:
                await browser.call("Page.enable")
                await browser.call("Page.navigate", url=served.url)  # the printed URL, with its token
                coloured = 0
                for _ in range(120):  # the lab starts in its own process, loads the model, then generates
                    await asyncio.sleep(0.5)
                    # a quarter-scale shot of the token view (decoding full-size PNGs in Python is slow)
                    coloured = heat_pixels(await browser.screenshot(0.25, 780, 500), right=1.0, bottom=1.0)
                    if coloured > 60:
                        break
                (tmp_path / "lab.png").write_bytes(await browser.screenshot())
                return coloured

        assert asyncio.run(look()) > 60, "no heat-coloured tokens appeared in the browser (see lab.png)"


def test_html_export_opens_in_chromium_without_errors(engine, tmp_path) -> None:
    from test_session import make_session

    from tokenlab.export import to_html

    session = make_session(engine)
    page = tmp_path / "session.html"
    page.write_text(to_html(session), encoding="utf-8")
    expected = len([step for step in session.current_steps() if step.text or step.eog])

    async def open_page() -> tuple[int, list[str], int]:
        async with Browser(tmp_path / "chromium") as browser:
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=page.as_uri())
            await asyncio.sleep(1.0)
            result = await browser.call("Runtime.evaluate", expression="document.querySelectorAll('.t').length",
                                        returnByValue=True)
            coloured = heat_pixels(await browser.screenshot(0.5), right=1.0, bottom=1.0)
            return int(result["result"]["value"]), browser.errors, coloured

    tokens, errors, coloured = asyncio.run(open_page())
    assert tokens == expected and errors == [] and coloured > 50


def test_html_export_tooltips_are_drawn_above_the_text_that_follows(engine, tmp_path) -> None:
    from tokenlab.export import to_html
    from tokenlab.lab.generation import Generation
    from tokenlab.lab.session import Session
    from tokenlab.lab.tree import GenerationTree
    from tokenlab.sampling import SamplerParams

    prompt = "Once upon a time"
    generation = Generation(engine, engine.format_prompt(prompt, chat=False), SamplerParams(ban=(engine.eos_id,)),
                            seed=3, max_tokens=80)
    steps = list(generation.run())
    tree = GenerationTree(prompt)
    tree.add(steps, stop_reason=generation.stop_reason)
    session = Session(prompt=prompt, chat=False, model=engine.name, seed=3, max_tokens=80, tree=tree,
                      current=tuple(step.id for step in steps))
    page = tmp_path / "session.html"
    page.write_text(to_html(session), encoding="utf-8")
    # every token of the first line, odd and even: its tooltip must win over the lines below it
    probe = """(() => {
      const tokens = [...document.querySelectorAll('.text > .t')];
      const top = tokens[0].getBoundingClientRect().top;
      return tokens.map((t, i) => [i, t.getBoundingClientRect()])
        .filter(([i, r]) => r.top === top && r.width > 0).slice(0, 6)
        .map(([i, r]) => [i, r.left + r.width / 2, r.top + r.height / 2]);
    })()"""
    covered = """((index) => {
      const tip = document.querySelectorAll('.text > .t')[index].querySelector('.tip');
      const r = tip.getBoundingClientRect();
      if (r.width === 0) return 'tooltip not shown';
      const misses = [];
      for (let x = r.left + 4; x < r.right - 4; x += 10)
        for (let y = r.top + 4; y < r.bottom - 4; y += 6) {
          const hit = document.elementFromPoint(x, y);
          if (hit && !tip.contains(hit)) misses.push(hit.className);
        }
      return misses.length ? 'under: ' + misses.slice(0, 3).join(',') : 'on top';
    })"""

    async def hover_tokens() -> list[tuple[int, str]]:
        async with Browser(tmp_path / "chromium") as browser:
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=page.as_uri())
            await asyncio.sleep(1.0)
            points = (await browser.call("Runtime.evaluate", expression=probe, returnByValue=True))["result"]["value"]
            results = []
            for index, x, y in points:
                await browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
                await asyncio.sleep(0.1)
                verdict = await browser.call("Runtime.evaluate", expression=f"{covered}({index})", returnByValue=True)
                results.append((index, verdict["result"]["value"]))
            return results

    results = asyncio.run(hover_tokens())
    assert len(results) >= 4 and any(index % 2 == 0 for index, _ in results)  # odd-numbered (1st, 3rd...) ones
    assert all(verdict == "on top" for _, verdict in results), results
