"""Atomic file and directory writes: a crash or a racing process never leaves a half-written file.

Files are written to a temporary file in the same directory, flushed and fsynced, then moved into
place with ``os.replace`` (atomic on POSIX and Windows within one file system). Directories are
built in a temporary directory next to the target and renamed into place; replacing one swaps
the two in a single ``renameat2(RENAME_EXCHANGE)`` on Linux, so a kill at any instant leaves the
old or the new directory in place, never neither. A ``manifest.json`` listing every file with its
size and sha256 lets a reader verify what it is about to trust.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_NEW_FILE_MODE = 0o644
_NEW_DIR_MODE = 0o755
_STALE_SECONDS = 6 * 3600.0
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_dir(path: str | Path) -> None:
    """Flush a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all-or-nothing: readers see the old or new file, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _NEW_FILE_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)
    return target


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def sha256_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file's content, read in chunks so large weight files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` except the manifest, in a stable order."""
    for path in sorted(root.rglob("*")):
        if (
            path.is_file()
            and not path.is_symlink()
            and path.relative_to(root) != Path(MANIFEST_NAME)
        ):
            yield path


def write_manifest(root: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``root/manifest.json`` (each file's size and sha256) so readers can verify the tree."""
    base = Path(root)
    files = {
        path.relative_to(base).as_posix(): {
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        for path in _iter_files(base)
    }
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "files": files}
    if extra:
        manifest["extra"] = extra
    write_json_atomic(base / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Parse ``root/manifest.json``; ``OSError`` when missing, ``ValueError`` when malformed."""
    path = Path(root) / MANIFEST_NAME
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a format-{MANIFEST_FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path} lists no files")
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(f"{path}: bad entry for {name!r}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{path}: entry {name!r} points outside the directory")
    return manifest


def verify_manifest(root: str | Path) -> str | None:
    """Check each file in ``root``'s manifest (size, then sha256); return why it fails, or None."""
    base = Path(root)
    try:
        manifest = read_manifest(base)
    except FileNotFoundError:
        return f"{MANIFEST_NAME} is missing"
    except (OSError, ValueError) as err:
        return f"{MANIFEST_NAME} is unreadable ({err})"
    for name, entry in manifest["files"].items():
        path = base / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']}"
        try:
            digest = sha256_file(path)
        except OSError as err:
            return f"{name} cannot be read ({err})"
        if digest != entry["sha256"]:
            return f"{name} has sha256 {digest[:12]}…, the manifest says {entry['sha256'][:12]}…"
    return None


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2``, looked up once (None off Linux or with an older libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    path_t, int_t = ctypes.c_char_p, ctypes.c_int
    fn.argtypes = [int_t, path_t, int_t, path_t, ctypes.c_uint]
    fn.restype = int_t
    return fn


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot.

    Linux ``renameat2(RENAME_EXCHANGE)`` (kernel 3.15, glibc 2.28; ext4, xfs, btrfs, tmpfs...).
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT):
        return False  # unsupported here, or ``b`` vanished meanwhile: the caller renames instead
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk before it is published."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_symlink():
            continue
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(root)


def _sweep_stale(parent: Path, prefix: str, max_age: float) -> None:
    """Remove old temp/trash dirs left by crashed builds of this target (young ones may be live)."""
    now = time.time()
    for path in parent.glob(prefix + "*"):
        try:
            if now - path.stat().st_mtime > max_age:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def publish_dir(
    target: str | Path,
    build: Callable[[Path], None],
    *,
    replace: bool = False,
    stale_seconds: float = _STALE_SECONDS,
) -> bool:
    """Build a directory with ``build(tmp)`` next to ``target`` and rename it into place atomically.

    Returns True when this call published ``target``. When ``target`` already exists (another
    process published first, even while we were building) the existing one is kept and False is
    returned, unless ``replace`` is set: then the new one is swapped in atomically where the OS can
    (``exchange_paths``), else the old one is moved aside first, which leaves a brief window with
    neither (if a racing process re-publishes meanwhile, theirs is kept). Readers never see a
    partly built directory.
    """
    dest = Path(target)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{dest.name}.tmp-"
    trash_prefix = f".{dest.name}.old-"
    _sweep_stale(parent, tmp_prefix, stale_seconds)
    _sweep_stale(parent, trash_prefix, stale_seconds)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=parent))
    try:
        build(tmp)
        os.chmod(tmp, _NEW_DIR_MODE)
        _fsync_tree(tmp)
        if replace and dest.exists():
            if exchange_paths(tmp, dest):
                fsync_dir(parent)
                return True  # ``tmp`` now holds the old directory; removed below
            trash = Path(tempfile.mkdtemp(prefix=trash_prefix, dir=parent))
            try:
                os.rename(dest, trash / dest.name)
            except FileNotFoundError:
                pass  # a racing process moved it aside already
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if dest.exists():
                return False  # someone else published first: keep theirs
            raise
        fsync_dir(parent)
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
