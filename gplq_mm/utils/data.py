"""Taking a fixed number of images from a data loader, with progress."""
import time
from typing import Callable, Iterable, Iterator

__all__ = ['take_images', 'with_progress']


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


def with_progress(batches: Iterable[dict], n: int, what: str,
                  log: Callable[[str], None], every_s: float = 10.0,
                  where: str = '') -> Iterator[dict]:
    """``batches`` (dicts with ``inputs``) passed through; every
    ``every_s`` seconds and after the ``n``-th image, ``log`` gets
    ``'<what>: <seen>/<n> images<where>, <rate> images/s, ETA <s>s'``. The
    consumer's work on each batch is timed too."""
    seen, t0, last = 0, time.time(), time.time()
    for data in batches:
        yield data
        seen += len(data['inputs'])
        now = time.time()
        if seen >= n or now - last >= every_s:
            last = now
            rate = seen / max(now - t0, 1e-9)
            log(f'{what}: {seen}/{n} images{where}, {rate:.1f} images/s, '
                f'ETA {max(n - seen, 0) / rate:.0f}s')
