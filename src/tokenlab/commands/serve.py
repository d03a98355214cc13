"""`tokenlab serve`: the lab in a web browser, one lab process per tab."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tokenlab.commands.common import err_console
from tokenlab.commands.lab import DEFAULT_LAB_PROMPT
from tokenlab.commands.options import RunOptions, check_options, forwarded_flags, with_run_options
from tokenlab.errors import UserError


@with_run_options
def serve(
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt the lab starts from. Default: a short-story prompt.", show_default=False)] = None,
    *,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (localhost by default: only this machine can connect; 0.0.0.0: every interface).", rich_help_panel="Server")] = "localhost",
    port: Annotated[int, typer.Option("--port", help="TCP port.", rich_help_panel="Server")] = 8000,
    no_token: Annotated[bool, typer.Option("--no-token", help="Serve without the secret token in the URL: anyone who can reach the port can start labs.", rich_help_panel="Server")] = False,
    max_labs: Annotated[int, typer.Option("--max-labs", help="Most labs (browser tabs, one process each) running at once.", rich_help_panel="Server")] = 4,
    files_dir: Annotated[Path, typer.Option("--files-dir", help="The one directory served labs read (g with a path) and write (s) files in. Default: the current directory.", rich_help_panel="Server")] = Path("."),
    opts: RunOptions,
) -> None:
    """Serve the lab to a web browser (textual-serve): each browser tab gets its own lab.

    The URL printed carries a secret token (as Jupyter's does); pages of other sites cannot drive a lab.
    """
    import shlex

    from tokenlab.serve import WILDCARD_HOSTS, AddressError, LabServer, check_address, url_host

    check_options(opts)
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {port}")
    if max_labs < 1:
        raise UserError(f"--max-labs must be at least 1, got {max_labs}")
    if not files_dir.is_dir():
        raise UserError(f"--files-dir {files_dir} is not a directory; create it or name another")
    try:
        check_address(host, port)
    except AddressError as exc:
        raise UserError(str(exc)) from None
    from tokenlab.engine.models import resolve_model

    if opts.engine is None:
        path = resolve_model(opts.model)  # pull it now, with progress, not inside a browser tab
        opts.model = str(path)
    root = files_dir.resolve()
    command = shlex.join([sys.executable, "-m", "tokenlab", "lab", prompt or DEFAULT_LAB_PROMPT,
                          *forwarded_flags(opts), f"--files-dir={root}"])
    token = None if no_token else secrets.token_urlsafe(24)
    if host in WILDCARD_HOSTS:
        err_console.print(f"warning: --host {host or '(empty)'} listens on every network interface: anyone who can "
                          "reach this machine can open the page" + ("" if no_token else " (the token still guards the labs)"),
                          markup=False)
    if no_token:
        err_console.print("warning: --no-token: no secret guards the labs; any user or program that can reach the "
                          "port can run labs and read and write files in " + str(root), markup=False)
    browse_host = "localhost" if host in WILDCARD_HOSTS else url_host(host)
    url = f"http://{browse_host}:{port}/" + (f"?token={token}" if token else "")

    def announce() -> None:
        err_console.print(f"serving the lab on {url}", markup=False, soft_wrap=True)
        err_console.print(f"labs read and write files in {root}; at most {max_labs} at once (Ctrl-C stops)",
                          markup=False, soft_wrap=True)

    server = LabServer(command, host=host, port=port, token=token, max_labs=max_labs, announce=announce)
    try:
        server.serve()
    except AddressError as exc:
        raise UserError(str(exc)) from None
