"""The front page and the docs stay true to the repository: every `make`
target and every relative link they name exists, and the README stays a
front page."""
import glob
import os.path as osp
import re

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAGES = ['README.md'] + sorted(
    osp.relpath(p, ROOT) for p in glob.glob(f'{ROOT}/docs/*.md') +
    glob.glob(f'{ROOT}/configs/*/README.md'))


def _read(page):
    with open(osp.join(ROOT, page)) as f:
        return f.read()


def _make_targets():
    text = _read('Makefile')
    return set(re.findall(r'^([a-z][\w-]*):', text, flags=re.M))


@pytest.mark.parametrize('page', PAGES)
def test_named_make_targets_exist(page):
    named = set(re.findall(r'`make ([a-z][\w-]*)', _read(page)))
    assert named <= _make_targets(), sorted(named - _make_targets())


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_exist(page):
    links = re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', _read(page))
    local = [link for link in links if '://' not in link]
    missing = [link for link in local if not osp.exists(
        osp.normpath(osp.join(ROOT, osp.dirname(page), link)))]
    assert not missing


def test_readme_is_a_front_page():
    text = _read('README.md')
    assert len(text.splitlines()) < 250
    for must in ('make demo', 'make test', '## Install', 'Results summary'):
        assert must in text, must


def test_the_checks_can_fail():
    """The patterns find what they look for (a check that cannot fail is
    none)."""
    assert 'demo' in _make_targets() and 'nonsense' not in _make_targets()
    assert re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)',
                      '[a](docs/x.md#y) [b](https://e.org)') == [
                          'docs/x.md', 'https://e.org']
