"""The link control API's per-stack bearer token: read from its file, sent as a request header.

The stack writes a random token to a file only its owner can read (mode 0600) and starts the
proxy with ``--token-file``; every PUT to the control API must then carry
``Authorization: Bearer <token>``, so other local users can read links but not change them.
"""

from __future__ import annotations

import stat
from pathlib import Path

MAX_TOKEN_BYTES = 4096


def read_token_file(path: str | Path, *, private: bool = False) -> str:
    """The token in ``path`` (surrounding whitespace stripped); ``ValueError`` naming the file
    when it cannot be read or is empty, and with ``private`` (the proxy, which trusts it) when
    group or others may read or write it."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"token file {p} is not a regular file")
        if private and mode & 0o077:
            raise ValueError(f"token file {p} is accessible to other users (mode "
                             f"{stat.S_IMODE(mode):04o}); it must be 0600 (chmod 600 {p})")
        data = p.read_bytes()[:MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"cannot read token file {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise ValueError(f"token file {p} must hold at most {MAX_TOKEN_BYTES} bytes")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"token file {p} must hold a printable ASCII token") from None
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(f"token file {p} must hold one token: printable ASCII, no spaces, "
                         f"not empty")
    return token


def auth_headers(token: str | None) -> dict[str, str]:
    """The request header carrying ``token`` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
