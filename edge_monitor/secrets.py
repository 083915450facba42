"""Read secrets (the MQTT password) from a file or a systemd credential.

A secret spec is either a file path or ``credential:NAME``. The latter reads
``$CREDENTIALS_DIRECTORY/NAME``, the folder systemd fills from the unit's
``LoadCredential=``/``SetCredentialEncrypted=`` lines. Error messages name the
file and the problem, never the secret's content.
"""

from __future__ import annotations

import os
from pathlib import Path

CREDENTIAL_PREFIX = "credential:"
_MAX_SECRET_BYTES = 64 * 1024  # a password larger than this is certainly the wrong file


class SecretError(Exception):
    """A secret could not be read. The message never contains the secret itself."""


def secret_path(spec: str) -> Path:
    """The file that holds the secret named by ``spec`` (a path or ``credential:NAME``)."""
    if spec.startswith(CREDENTIAL_PREFIX):
        name = spec[len(CREDENTIAL_PREFIX):]
        if not name or "/" in name or name in (".", ".."):
            raise SecretError(f"bad systemd credential name {name!r} in {spec!r}: expected a plain file name")
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"{spec!r} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=, or give a file path instead)")
        return Path(directory) / name
    if not spec:
        raise SecretError("empty secret file name")
    return Path(spec)


def read_secret(spec: str) -> str:
    """The secret named by ``spec``, without its trailing newline.

    Raises ``SecretError`` naming the file when it is missing, unreadable,
    empty, too large or not UTF-8.
    """
    path = secret_path(spec)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise SecretError(f"secret file {str(path)!r} does not exist") from None
    except PermissionError:
        raise SecretError(f"secret file {str(path)!r} is not readable by this user") from None
    except IsADirectoryError:
        raise SecretError(f"secret file {str(path)!r} is a directory") from None
    except OSError as exc:
        raise SecretError(f"cannot read secret file {str(path)!r}: {exc.strerror}") from None
    if len(raw) > _MAX_SECRET_BYTES:
        raise SecretError(f"secret file {str(path)!r} is larger than {_MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"secret file {str(path)!r} is not UTF-8 text") from None
    # Editors and `echo` add a final newline; it is never part of the password.
    text = text.rstrip("\r\n")
    if not text:
        raise SecretError(f"secret file {str(path)!r} is empty")
    return text
