"""Reading and writing the small JSON files the tools exchange; a file's
content hash."""
import hashlib
import json

__all__ = ['read_json', 'write_json', 'file_sha256']


def read_json(path):
    """The JSON object in the file ``path``."""
    with open(path) as f:
        return json.load(f)


def write_json(obj, path, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path``."""
    with open(path, 'w') as f:
        json.dump(obj, f, indent=indent)


def file_sha256(path) -> str:
    """The SHA-256 of the file ``path``'s content (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()
