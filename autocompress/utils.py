"""Small helpers shared by several parts: atomic writes and the cache folder."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def cache_dir(sub: str) -> Path:
    root = Path(os.environ.get("AUTOCOMPRESS_CACHE", Path.home() / ".cache" / "autocompress"))
    path = root / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_mode() -> int:
    """The mode ``open()`` gives a new file (0644 under the usual umask 022); mkstemp's 0600
    would leave a run directory with mixed permissions."""
    try:  # Linux says without changing it (os.umask sets the process-wide mask, even if briefly)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: Path, write) -> None:
    """Write to a temporary file beside ``path`` and rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def atomic_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def bf16_is_fast() -> bool:
    """bf16 autocast pays on CPUs with native bf16 (AVX-512 BF16 / AMX); on others (AVX2 only)
    oneDNN emulates it and training runs an order of magnitude slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: the largest YAML / JSON input read (profiles, spaces, configs), checked before parsing: a
#: shipped profile is a few KiB, and a hostile or mistaken 50 MB file would parse for minutes
MAX_INPUT_BYTES = 10 * 2**20
#: YAML aliases allowed in one input: nested aliases expand exponentially ("billion laughs")
MAX_YAML_ALIASES = 100


def read_input_text(path: Path, kind: str) -> str:
    """The text of a YAML / JSON input file, refused in one line when it is larger than
    MAX_INPUT_BYTES (read no further than the cap, so a device or a growing file cannot hang
    it), is not UTF-8 text, or holds more YAML aliases than MAX_YAML_ALIASES."""
    import yaml

    from autocompress._errors import UserError

    path = Path(path)
    cap = MAX_INPUT_BYTES
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise UserError(f"cannot read {kind} file {str(path)!r}: {e.strerror or e}") from None
    if len(data) > cap:
        raise UserError(f"{path.name}: {kind} file is larger than the {cap // 2**20} MiB limit on YAML/JSON "
                        "input; is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name}: not a UTF-8 text file (byte {e.start}); expected YAML or JSON") from None
    if "*" in text:
        try:
            aliases = sum(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError:
            aliases = 0  # the parser that follows names the error
        if aliases > MAX_YAML_ALIASES:
            raise UserError(f"{path.name}: {aliases} YAML aliases (more than {MAX_YAML_ALIASES}); nested aliases "
                            "can expand without bound, write the values out instead")
    return text


def load_yaml_file(spec, package: str, kind: str, model_cls):
    """A shipped YAML file of ``package`` by name, or a file by path, validated by the pydantic
    ``model_cls``; every failure is one UserError line naming the file and the field."""
    import yaml
    from pydantic import ValidationError

    from autocompress._errors import UserError, unknown_name

    spec = str(spec)
    shipped = shipped_yaml(package)
    if spec in shipped:
        path = shipped[spec]
    elif spec.endswith((".yaml", ".yml")) or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{kind} file {spec!r} does not exist")
    else:
        raise unknown_name(kind, spec, list(shipped))
    try:
        data = yaml.safe_load(read_input_text(path, kind))
    except yaml.YAMLError as e:
        raise UserError(f"{path.name}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: expected a mapping of {kind} fields, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise UserError(f"{path.name}: field {field!r}: {' '.join(str(err['msg']).split())}") from None


def shipped_yaml(package: str) -> dict[str, Path]:
    """Name -> path of the YAML files shipped as package data in ``package``."""
    from importlib import resources

    root = resources.files(package)
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}
