"""`tokenlab doctor`: what this install is and whether it works, for users and for bug reports."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenlab import __version__

_PACKAGES = ("llama-cpp-python", "numpy", "textual", "rich", "typer", "textual-serve")
_ENVIRONMENT = ("TOKENLAB_MODELS", "TOKENLAB_DATA", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                "CMAKE_ARGS")


class DoctorFormat(str, Enum):
    """How `doctor` prints its report."""

    text = "text"
    json = "json"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _models_report() -> dict[str, Any]:
    """The models directory and each catalogue model: pulled or not, and whether its sha256 matches."""
    from tokenlab.engine import models as catalogue

    directory = catalogue.models_dir()
    # what killed pulls and saves left behind (a pull still running elsewhere holds a lock and stays)
    swept = [str(path) for path in catalogue.sweep_leftovers(directory)] if directory.is_dir() else []
    entries = []
    for entry in catalogue.CATALOGUE.values():
        path = directory / entry.filename
        pulled = path.is_file()
        entries.append({"name": entry.name, "path": str(path), "pulled": pulled,
                        "size_bytes": path.stat().st_size if pulled else None,
                        # the pull's own check: size and sha256 (remembered by size and mtime)
                        "sha256_ok": catalogue.is_pulled(entry.name) if pulled else None})
    known = {entry.filename for entry in catalogue.CATALOGUE.values()}
    others = sorted(str(path) for path in directory.glob("*.gguf") if path.name not in known) \
        if directory.is_dir() else []
    return {"directory": str(directory), "catalogue": entries, "other_gguf_files": others, "swept": swept}


def _ggml_exp_kernel() -> bool:
    """Whether llama.cpp's vectorised exp was found and agrees with numpy (tokenlab.engine.kernels)."""
    from tokenlab.engine.kernels import load_ggml_exp_sum

    return load_ggml_exp_sum() is not None


def collect(*, check: bool = True) -> dict[str, Any]:
    """Everything the doctor reports, as JSON-ready data, with a one-line verdict."""
    from tokenlab.engine.models import DEFAULT_MODEL, catalogue_path
    from tokenlab.engine.system import build_info, cpu_info

    problems: list[str] = []
    report: dict[str, Any] = {
        "tokenlab": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
    }
    cpu = cpu_info()
    report["cpu"] = {
        "machine": cpu.machine, "model": cpu.model, "flags": cpu.flags,
        "logical_cores": cpu.logical_cores, "usable_cores": cpu.usable_cores,
    }
    report["threads"] = {"default": cpu.usable_cores}
    try:
        info = build_info()
    except Exception as exc:  # noqa: BLE001 - a broken install is exactly what the doctor reports
        report["llama_cpp"] = {"error": f"{type(exc).__name__}: {exc}"}
        problems.append("llama.cpp cannot be loaded")
    else:
        report["llama_cpp"] = {
            "system_info": info.text,
            "backends": info.backends,
            "features": info.features,
            "gpu_offload": info.gpu_offload,
            "amx_in_build": info.has_amx,
            "extra_buffer_types": not info.has_amx,
            "ggml_exp_kernel": _ggml_exp_kernel(),
        }
    report["models"] = _models_report()
    report["environment"] = {name: os.environ.get(name) for name in _ENVIRONMENT}
    for row in report["models"]["catalogue"]:
        if row["pulled"] and not row["sha256_ok"]:
            problems.append(f"{row['name']} is damaged (checksum mismatch): run tokenlab models pull {row['name']}")
    default_path = catalogue_path(DEFAULT_MODEL)
    if not check:
        report["decode_check"] = None
    elif not default_path.is_file():
        report["decode_check"] = {"ok": False, "detail": "not run: the default model is not pulled",
                                  "seconds": 0.0, "signal": None}
        problems.append(f"the default model is not pulled: run tokenlab models pull {DEFAULT_MODEL}")
    else:
        from tokenlab.engine.selfcheck import run_decode_check

        result = run_decode_check(default_path)
        report["decode_check"] = result.to_dict()
        if not result.ok:
            problems.append(result.detail)
    if problems:
        report["verdict"] = "problem: " + "; ".join(problems)
    else:
        decoded = " and decodes" if check else ""
        report["verdict"] = f"ok: llama.cpp loads{decoded} on this machine"
    report["ok"] = not problems
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report as a few readable tables, the verdict last."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    python = report["python"]
    table.add_row("tokenlab", report["tokenlab"])
    table.add_row("python", f"{python['version']} ({python['executable']})")
    table.add_row("platform", report["platform"])
    for name, version in report["packages"].items():
        table.add_row(name, version or "not installed")
    cpu = report["cpu"]
    table.add_row("cpu", f"{cpu['model'] or cpu['machine']}")
    table.add_row("cpu flags", " ".join(cpu["flags"]) or "none of interest")
    table.add_row("cores", f"{cpu['usable_cores']} usable of {cpu['logical_cores']}; "
                           f"default threads {report['threads']['default']}")
    llama = report["llama_cpp"]
    if "error" in llama:
        table.add_row("llama.cpp", f"[red]{escape(llama['error'])}[/]")
    else:
        table.add_row("backends", ", ".join(llama["backends"]) or "?")
        enabled = [name for name, value in llama["features"].items() if value not in ("0", "")]
        table.add_row("build features", " ".join(enabled))
        table.add_row("gpu offload", "yes" if llama["gpu_offload"] else "no (CPU build)")
        table.add_row("raw statistics", "llama.cpp's vectorised exp" if llama["ggml_exp_kernel"]
                      else "numpy's exp (llama.cpp's kernel was not found in this build)")
        if llama["amx_in_build"]:
            table.add_row("amx", "[yellow]this build holds AMX code: tokenlab keeps llama.cpp's extra buffer "
                                 "types off so it never runs (rebuild with ./scripts/setup for a portable build)[/]")
    models = report["models"]
    table.add_row("models dir", models["directory"])
    for row in models["catalogue"]:
        if not row["pulled"]:
            state = "not pulled"
        elif row["sha256_ok"]:
            state = "[green]pulled, sha256 ok[/]"
        else:
            state = "[red]pulled, but its size or sha256 does not match[/]"
        table.add_row(f"  {row['name']}", state)
    for path in models["other_gguf_files"]:
        table.add_row("  other", escape(path))
    for path in models["swept"]:
        table.add_row("  swept", f"removed the leftover {escape(path)}")
    for name, value in report["environment"].items():
        if value is not None:
            table.add_row(name, escape(value))
    check = report["decode_check"]
    if check is not None:
        colour = "green" if check["ok"] else "red"
        table.add_row("decode check", f"[{colour}]{escape(check['detail'])}[/] ({check['seconds']:.1f} s)")
    console.print(table)
    colour = "green" if report["ok"] else "red"
    console.print(f"[bold {colour}]{escape(report['verdict'])}[/]", soft_wrap=True)


def doctor(
    output_format: Annotated[
        DoctorFormat, typer.Option("--format", "-f", help="text, or json for a bug report.")
    ] = DoctorFormat.text,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the decode check in a subprocess (a few seconds).")
    ] = True,
) -> None:
    """Versions, llama.cpp's build and CPU features, models and a decode check: paste it into bug reports.

    Exit status 0 when everything works, 1 when something does not (the verdict says what).
    """
    report = collect(check=check)
    if output_format is DoctorFormat.json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report, Console(highlight=False))
    raise typer.Exit(0 if report["ok"] else 1)
