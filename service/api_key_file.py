"""The generated API key, kept in the state folder so a restart does not sign every tablet out.

Without `FALLDET_API_KEYS` the service never runs open: it uses the key in `STATE_DIR/api_key`,
making it once (random, 32 URL-safe characters) when the file is missing. The file is created with
mode 0600 (owner only) and written atomically; a file with wider permissions is tightened and
said so. The key itself is never printed or logged, only where it is (issue 25 item 5).
"""
from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path

FILE_NAME = "api_key"


def load_or_create(state_dir: Path) -> tuple[str, Path, bool]:
    """(key, path, created): the stored key, or a new one written now."""
    path = Path(state_dir) / FILE_NAME
    if path.is_file():
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
            print(f"{path} was readable by others; now 0600", file=sys.stderr, flush=True)
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"{path} is empty: delete it to make a new key, or set FALLDET_API_KEYS")
        return key, path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key, path, True
