"""Saves write regular files only: symlinks are followed, directories, devices and FIFOs are refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tokenlab.files import NotARegularFileError, OutsideDirectoryError, confined_path, write_text_atomic


def test_a_symlink_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    written = write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text(encoding="utf-8") == "new" and written == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temp file left


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "later.json")
    write_text_atomic(link, "made")
    assert link.is_symlink() and (tmp_path / "later.json").read_text(encoding="utf-8") == "made"


def test_a_fifo_is_refused_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFileError, match="FIFO"):
        write_text_atomic(fifo, "text")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(NotARegularFileError, match="directory"):
        write_text_atomic(folder, "text")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_device_behind_a_link_is_refused(tmp_path: Path) -> None:
    # a link to /dev/null reaches a device without touching /dev itself (safe as root and as a user)
    link = tmp_path / "out.json"
    link.symlink_to("/dev/null")
    with pytest.raises(NotARegularFileError, match="device"):
        write_text_atomic(link, "text")
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_confined_paths_stay_in_their_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert confined_path("sub/a.json", root) == root.resolve() / "sub" / "a.json"
    assert confined_path("a.json", None) == Path("a.json")
    for name in ("../x.json", "sub/../../x.json", str(tmp_path / "x.json"), "~/x.json", "out/x.json"):
        with pytest.raises(OutsideDirectoryError, match="only inside"):
            confined_path(name, root)


def tokenlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenlab", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"})


@pytest.fixture(scope="module")
def session_file(engine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_session import make_session

    from tokenlab.lab.session import save

    return save(make_session(engine), tmp_path_factory.mktemp("session") / "s.json")


def test_export_to_stdout_with_a_dash(session_file: Path) -> None:
    plain = tokenlab("export", str(session_file), "-f", "md")
    dash = tokenlab("export", str(session_file), "-f", "md", "-o", "-")
    assert plain.returncode == dash.returncode == 0, dash.stderr
    assert dash.stdout == plain.stdout and dash.stdout.startswith("# tokenlab session")
    assert not Path("-").exists()


@pytest.mark.parametrize("kind", ["directory", "fifo", "device link"])
def test_export_refuses_what_is_not_a_regular_file(session_file: Path, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/null")
    before = target.lstat().st_mode
    result = tokenlab("export", str(session_file), "-o", str(target))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(target) in lines[0] and "regular file" in lines[0]
    assert target.lstat().st_mode == before
