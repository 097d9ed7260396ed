"""Taking a fixed number of images from a data loader."""
from typing import Callable, Iterable, Iterator

__all__ = ['take_images']


def take_images(loader: Iterable[dict], preprocess: Callable[[dict], dict],
                n: int) -> Iterator[dict]:
    """Preprocessed batches of ``loader`` holding ``n`` images in all (the
    last one cut short; the loader is iterated again when it runs out)."""
    seen = 0
    while seen < n:
        for data in loader:
            data = preprocess(data)
            k = min(len(data['inputs']), n - seen)
            data['inputs'] = data['inputs'][:k]
            if data.get('data_samples') is not None:
                data['data_samples'] = data['data_samples'][:k]
            seen += k
            yield data
            if seen >= n:
                return
