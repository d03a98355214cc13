"""`tokenlab serve` against hostile clients: a real server on a loopback port, driven over HTTP and its websocket."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest


ANSI = re.compile(r"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """A running `tokenlab serve`: its process, the URL it printed and what it wrote to stderr."""

    process: subprocess.Popen[str]
    port: int
    url: str = ""
    stderr: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.url.partition("?token=")[2]

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def tokenlab_serve(*args: str, cwd: Path | None = None, colour: bool = False) -> subprocess.Popen[str]:
    # NO_COLOR keeps the websocket tests' screens plain text; a browser test wants the heat colours
    env = {**os.environ, "COLUMNS": "300"}
    if colour:
        env.pop("NO_COLOR", None)
    else:
        env["NO_COLOR"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "tokenlab", "serve", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
        env=env,
        start_new_session=True,  # its own process group: the labs it spawns are ended with it
    )


@contextlib.contextmanager
def serving(*args: str, host: str = "127.0.0.1", colour: bool = False) -> Iterator[Served]:
    """Start `tokenlab serve` on a free loopback port and wait until it prints its URL."""
    port = free_port()
    served = Served(tokenlab_serve("The capital of France is", "--raw", "--seed", "1", "--host", host,
                                   "--port", str(port), *args, colour=colour), port)
    assert served.process.stderr is not None
    reader = threading.Thread(target=lambda: served.stderr.extend(served.process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not served.url:
            announced = [line for line in served.stderr if line.startswith("serving the lab on ")]
            if announced:
                served.url = announced[0].split()[-1]
                break
            assert served.process.poll() is None, "".join(served.stderr)
            assert time.monotonic() < deadline, "tokenlab serve did not print its URL: " + "".join(served.stderr)
            time.sleep(0.1)
        yield served
    finally:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(served.process.pid, signal.SIGKILL)  # any lab left behind
        served.process.wait(10)


class LabSocket:
    """A lab over its websocket: keys go in, the terminal output comes back (escape sequences removed)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.raw = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw)

    async def wait_for(self, text: str, *, since: int = 0, timeout: float = 180, pattern: bool = False) -> int:
        """Read output until `text` (a regular expression if `pattern`) appears after position `since`."""
        deadline = time.monotonic() + timeout
        while (re.search(text, self.screen[since:]) is None) if pattern else (text not in self.screen[since:]):
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared; the screen ended with {self.screen[-2000:]!r}"
            try:
                message = await asyncio.wait_for(self.ws.receive(), left)
            except asyncio.TimeoutError:
                continue
            if message.type == aiohttp.WSMsgType.BINARY:
                self.raw += self._decoder.decode(message.data)
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise AssertionError(f"the lab's websocket closed; the screen ended with {self.screen[-2000:]!r}")
        return len(self.screen)

    async def drain(self, seconds: float) -> None:
        """Keep reading output for a while (what the lab shows after a key)."""
        with contextlib.suppress(AssertionError):
            await self.wait_for("\x00never\x00", since=len(self.screen), timeout=seconds)

    async def keys(self, data: str) -> None:
        await self.ws.send_json(["stdin", data])
        # the lab's input parser holds a lone "\r" until more input arrives (it could start "\r\n"); a
        # resize to the same size is more input, and changes nothing
        await self.ws.send_json(["resize", {"width": WIDTH, "height": HEIGHT}])


WIDTH, HEIGHT = 160, 45


def ws_url(served: Served, token: str | None) -> str:
    query = f"?width={WIDTH}&height={HEIGHT}" + (f"&token={token}" if token is not None else "")
    return f"ws://127.0.0.1:{served.port}/ws{query}"


def test_pages_and_websocket_need_the_printed_token(model_path) -> None:
    with serving() as served:
        assert re.fullmatch(rf"http://127\.0\.0\.1:{served.port}/\?token=[A-Za-z0-9_-]{{20,}}", served.url), served.url

        async def probe() -> None:
            # unsafe: keep cookies of an IP address, as browsers do
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                for url in (served.base() + "/", served.base() + "/?token=wrong", served.base() + "/download/x"):
                    async with http.get(url) as response:
                        assert response.status == 403, url
                        assert "token" in await response.text()
                for token in (None, "wrong"):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await http.ws_connect(ws_url(served, token))
                    assert refused.value.status == 403
                async with http.get(served.url) as response:
                    page = await response.text()
                    assert response.status == 200 and "data-session-websocket-url" in page
                    cookie = response.cookies[f"tokenlab-serve-{served.port}"]
                    assert cookie.value == served.token and cookie["httponly"] and cookie["samesite"] == "Strict"
                # the page's websocket carries no token: the cookie set with the page brings it (as a browser does)
                ws = await http.ws_connect(ws_url(served, None))
                await LabSocket(ws).wait_for(" prompt ")
                await ws.close()

        asyncio.run(probe())


def test_foreign_origins_and_hosts_are_refused(model_path) -> None:
    with serving() as served:

        async def probe() -> None:
            async with aiohttp.ClientSession() as http:
                # cross-site websocket hijacking: a page on another site opening the lab's websocket
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(ws_url(served, served.token), origin="http://evil.example")
                assert refused.value.status == 403
                # DNS rebinding: the right address under another name
                async with http.get(served.url, headers={"Host": f"evil.example:{served.port}"}) as response:
                    assert response.status == 403 and "evil.example" in await response.text()
                async with http.get(served.url, headers={"Origin": "null"}) as response:
                    assert response.status == 403
                # the lab's own page may: same origin, localhost as well as 127.0.0.1
                async with http.get(served.url, headers={"Host": f"localhost:{served.port}"}) as response:
                    assert response.status == 200
                    assert f"ws://localhost:{served.port}/ws" in await response.text()
                ws = await http.ws_connect(ws_url(served, served.token), origin=served.base())
                await LabSocket(ws).wait_for(" prompt ")
                await ws.close()

        asyncio.run(probe())


async def paste(lab: LabSocket, text: str) -> None:
    """Paste `text` into the field that has just opened, once it has the focus (keys before that are lost)."""
    for _ in range(20):
        mark = len(lab.screen)
        await lab.keys(f"\x1b[200~{text}\x1b[201~")  # a bracketed paste arrives whole or not at all
        with contextlib.suppress(AssertionError):
            await lab.wait_for(text, since=mark, timeout=3)
            return
    raise AssertionError(f"the field never took {text!r}")


async def save_as(lab: LabSocket, name: str) -> None:
    """Press s, clear the suggested file name, type `name` and enter."""
    mark = len(lab.screen)
    await lab.keys("s")
    await lab.wait_for("Save the session", since=mark)
    for _ in range(20):  # ctrl+u, until the field has the focus and shows empty
        mark = len(lab.screen)
        await lab.keys("\x15")
        with contextlib.suppress(AssertionError):
            await lab.wait_for(r"▊ +▎", since=mark, timeout=3, pattern=True)
            break
    await paste(lab, name)
    await lab.keys("\r")


async def score_file(lab: LabSocket, name: str) -> None:
    """Press g, type `name` and enter."""
    mark = len(lab.screen)
    await lab.keys("g")
    await lab.wait_for("Text to score", since=mark)
    await paste(lab, name)
    await lab.keys("\r")


def test_served_lab_reads_and_writes_only_inside_its_directory(model_path, engine, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("The secret outside the served directory.\n", encoding="utf-8")
    (root / "notes.txt").write_text("A note inside the served directory.\n", encoding="utf-8")
    # short absolute paths, so the refusal's first line names them whole
    outside = Path(f"/tmp/tl-{os.getpid()}-w.json")
    secret = Path(f"/tmp/tl-{os.getpid()}-r.txt")
    secret.write_text("Another secret outside the served directory.\n", encoding="utf-8")
    # each step waits for its own refusal (an earlier one may still be on screen): the name, then the reason
    writes = [("../escaped.json", "'..'"), (str(outside), "absolute")]
    reads = [("../secret.txt", "'..'"), (str(secret), "absolute")]
    try:
        with serving("--files-dir", str(root)) as served:

            async def drive() -> None:
                async with aiohttp.ClientSession() as http:
                    lab = LabSocket(await http.ws_connect(ws_url(served, served.token)))
                    await lab.wait_for(engine.name)  # the model is loaded
                    for name, reason in writes:
                        mark = len(lab.screen)
                        await save_as(lab, name)
                        await lab.wait_for(re.escape(f"{name}: {reason}"), since=mark, pattern=True)
                    for name, reason in reads:
                        mark = len(lab.screen)
                        await score_file(lab, name)
                        await lab.wait_for(re.escape(f"{name}: {reason}"), since=mark, pattern=True)
                        await lab.drain(2)
                        assert "perplexity" not in lab.screen[mark:], f"{name} was read and scored"
                    # inside the directory both work (and prove the keys above were read)
                    mark = len(lab.screen)
                    await save_as(lab, "inside.json")
                    await lab.wait_for("session saved", since=mark)
                    await score_file(lab, "notes.txt")
                    await lab.wait_for("perplexity", since=mark)
                    await lab.ws.close()

            asyncio.run(drive())
        assert (root / "inside.json").is_file()
        assert not outside.exists() and not (tmp_path / "escaped.json").exists()
    finally:
        secret.unlink()
        outside.unlink(missing_ok=True)


def descendant_command_lines(pid: int) -> list[list[str]]:
    """The command lines of every process below `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        for child in frontier:
            with contextlib.suppress(OSError):
                found.append(Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0"))
    return found


def test_labs_are_capped_and_get_every_flag(model_path, tmp_path: Path) -> None:
    with serving("--max-labs", "1", "--temperature", "1.1", "--top-k", "7", "--threads", "1",
                 "--logit-bias", " Paris=-2", "--max-tokens", "9") as served:

        async def drive() -> None:
            async with aiohttp.ClientSession() as http:
                first = LabSocket(await http.ws_connect(ws_url(served, served.token)))
                await first.wait_for(" prompt ")
                labs = [line for line in descendant_command_lines(served.process.pid) if "lab" in line]
                assert labs, descendant_command_lines(served.process.pid)
                for flag in ("--temperature=1.1", "--top-k=7", "--threads=1", "--logit-bias= Paris=-2",
                             "--max-tokens=9", "--raw", "--seed=1"):
                    assert flag in labs[0], (flag, labs[0])
                async with http.get(served.url) as response:
                    assert response.status == 503 and "All 1 labs" in await response.text()
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(ws_url(served, served.token))
                assert refused.value.status == 503
                await first.ws.close()
                for _ in range(100):  # the lab quits, then its place is free
                    async with http.get(served.url) as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.2)
                assert response.status == 200

        asyncio.run(drive())


def test_no_token_and_every_interface_warn() -> None:
    with serving("--no-token", host="0.0.0.0") as served:
        warnings = [line for line in served.stderr if line.startswith("warning:")]
        assert any("0.0.0.0" in line and "every network interface" in line for line in warnings), served.stderr
        assert any("--no-token" in line for line in warnings), served.stderr
        assert served.url == f"http://localhost:{served.port}/"

        async def probe() -> int:
            async with aiohttp.ClientSession() as http:
                async with http.get(served.base() + "/") as response:
                    return response.status

        assert asyncio.run(probe()) == 200


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenlab", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_bad_host_port_in_use_and_bad_flags_are_one_line() -> None:
    assert_one_line_error(run_serve("--host", "no-such-host.invalid"), "--host no-such-host.invalid")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(run_serve("--host", "127.0.0.1", "--port", str(port)), f"port {port} is already in use")
    assert_one_line_error(run_serve("--max-labs", "0"), "--max-labs")
    assert_one_line_error(run_serve("--files-dir", "/no/such/dir"), "--files-dir")


