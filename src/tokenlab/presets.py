"""Named sampler presets: the built-ins plus the user's own, in a TOML file in the config dir."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import platformdirs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

from tokenlab.files import write_text_atomic
from tokenlab.sampling.params import SamplerParams
from tokenlab.sampling.presets import BUILTIN_PRESETS
from tokenlab.errors import TokenlabError

CONFIG_ENV = "TOKENLAB_CONFIG"
"""Environment variable naming the config directory (else the platform's user config dir)."""

_NAME = re.compile(r"[\w .-]{1,40}")
_KNOBS = tuple(f.name for f in dataclasses.fields(SamplerParams))
_HEADER = '# tokenlab sampler presets: one [presets."name"] table each; unset knobs are defaults\n'


class PresetError(TokenlabError, ValueError):
    """A preset that cannot be found, saved, loaded or deleted; str() is one line."""


def presets_path() -> Path:
    """$TOKENLAB_CONFIG/presets.toml, else presets.toml in the user config dir."""
    config = os.environ.get(CONFIG_ENV)
    base = Path(config).expanduser() if config else Path(platformdirs.user_config_dir("tokenlab"))
    return base / "presets.toml"


def list_presets(path: Path | str | None = None) -> dict[str, str]:
    """Every preset name, built-ins first, mapped to "built-in" or "saved"."""
    names = dict.fromkeys(BUILTIN_PRESETS, "built-in")
    names.update(dict.fromkeys(_read(_resolve(path)), "saved"))
    return names


def load_preset(name: str, path: Path | str | None = None) -> SamplerParams:
    """The saved preset `name`, else the built-in one, else a PresetError listing the names."""
    file = _resolve(path)
    try:
        saved = _read(file)
    except PresetError:
        if name in BUILTIN_PRESETS:  # a broken file of the user's must not take the built-ins down with it
            return SamplerParams.from_preset(name)
        raise
    if name in saved:
        return _params(file, name, saved[name])
    if name in BUILTIN_PRESETS:
        return SamplerParams.from_preset(name)
    available = ", ".join([*BUILTIN_PRESETS, *saved])
    raise PresetError(f"unknown preset {name!r}; available presets: {available}")


def save_preset(name: str, params: SamplerParams, path: Path | str | None = None) -> Path:
    """Save `params` as `name` (only knobs that differ from the defaults), keeping the others."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name != name.strip():
        raise PresetError(
            f"invalid preset name {name!r}: use 1-40 letters, digits, spaces, '-', '_' or '.' "
            "(not starting or ending with a space)"
        )
    if name in BUILTIN_PRESETS:
        raise PresetError(f"{name!r} is a built-in preset; save under another name")
    file = _resolve(path)
    saved = _read(file)
    saved[name] = _table(params)
    _write(file, saved)
    return file


def delete_preset(name: str, path: Path | str | None = None) -> None:
    """Remove the saved preset `name` from the file; built-ins cannot be deleted."""
    file = _resolve(path)
    saved = _read(file)
    if name not in saved:
        if name in BUILTIN_PRESETS:
            raise PresetError(f"{name!r} is a built-in preset and cannot be deleted")
        known = ", ".join(saved) or "none"
        raise PresetError(f"no saved preset {name!r} in {file}; saved presets: {known}")
    del saved[name]
    _write(file, saved)


# ------------------------------------------------------------------------------------ reading


def _resolve(path: Path | str | None) -> Path:
    return presets_path() if path is None else Path(path)


def _read(file: Path) -> dict[str, dict[str, Any]]:
    """The raw preset tables of `file` by name ({} when it does not exist)."""
    fix = "edit it or delete it to start over"
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8-sig"))  # editors on Windows may add a BOM
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PresetError(f"cannot read presets file {file}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"presets file {file} is not valid TOML ({exc}); {fix}") from None
    except RecursionError:
        raise PresetError(f"presets file {file} nests too deeply to read; {fix}") from None
    extra = sorted(set(data) - {"presets"})
    if extra:
        raise PresetError(f"presets file {file}: unknown top-level key {extra[0]!r}; {fix}")
    presets = data.get("presets", {})
    if not isinstance(presets, dict):
        raise PresetError(f"presets file {file}: 'presets' must be a table; {fix}")
    for name, table in presets.items():
        if not isinstance(table, dict):
            raise PresetError(f"presets file {file}: preset {name!r} must be a table; {fix}")
    return presets


def _params(file: Path, name: str, table: dict[str, Any]) -> SamplerParams:
    """SamplerParams from one raw preset table, or a PresetError naming file, preset and key."""
    where = f"presets file {file}, preset {name!r}"
    for key, value in table.items():
        if key not in _KNOBS:
            close = difflib.get_close_matches(key, _KNOBS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PresetError(f"{where}: unknown key {key!r}{hint}")
        try:
            SamplerParams(**{key: value})
        except (ValueError, TypeError) as exc:
            raise PresetError(f"{where}, key {key!r}: {exc}") from None
    try:
        return SamplerParams(**table)
    except (ValueError, TypeError) as exc:  # knobs that are fine alone but not together
        raise PresetError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------ writing


def _table(params: SamplerParams) -> dict[str, Any]:
    """The TOML-ready knobs of `params` that differ from the defaults (None ones left out)."""
    defaults = SamplerParams().to_dict()
    return {
        key: value
        for key, value in params.to_dict().items()
        if value is not None and value != defaults[key]
    }


def _write(file: Path, presets: dict[str, dict[str, Any]]) -> None:
    """Write `presets` to `file` atomically (the file keeps its permissions)."""
    lines = [_HEADER]
    for name, table in presets.items():
        lines.append(f"\n[presets.{_string(name)}]\n")
        lines.extend(f"{_key(key)} = {_value(value)}\n" for key, value in table.items())
    write_text_atomic(file, "".join(lines))


def _string(text: str) -> str:
    # JSON escapes are TOML escapes too; DEL is the one control character JSON leaves raw
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _value(value: Any) -> str:
    """`value` as a TOML value: floats as repr, arrays, inline tables, JSON-escaped strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr gives inf, -inf, 1e-05, 2.0
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        items = ", ".join(f"{_string(str(k))} = {_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, (datetime.date, datetime.time)):  # kept from a hand-edited file
        return value.isoformat()
    raise TypeError(f"cannot write {value!r} to TOML")
