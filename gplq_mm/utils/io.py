"""Reading and writing the small JSON files the tools exchange."""
import json

__all__ = ['read_json', 'write_json']


def read_json(path):
    """The JSON object in the file ``path``."""
    with open(path) as f:
        return json.load(f)


def write_json(obj, path, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path``."""
    with open(path, 'w') as f:
        json.dump(obj, f, indent=indent)
