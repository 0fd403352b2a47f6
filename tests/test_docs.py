"""Docs are tests: every fenced block of README.md and docs/*.md runs.

Each page runs in its own interpreter (``tests/docs_blocks.py``, whose
docstring gives the conventions: output comments, ``...`` wildcards,
``<!-- docs-test: ... -->`` marks) in a scratch directory. A failure names
the page and the line of each failing block. ``test_page_marks`` checks,
without running anything, that every block the test cannot run is marked
with a reason the page shows.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import docs_blocks  # noqa: E402

ROOT = docs_blocks.ROOT
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
PAGE_TIMEOUT_S = 900


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_page_marks(page):
    problems = docs_blocks.check_page(page)
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=page_id)
def test_page_blocks_run(page, tmp_path):
    out = tmp_path / 'results.json'
    proc = subprocess.run(
        [sys.executable, str(Path(docs_blocks.__file__)), str(page),
         '--scratch', str(tmp_path / 'scratch'), '--json', str(out)],
        capture_output=True, text=True, timeout=PAGE_TIMEOUT_S, cwd=tmp_path)
    assert out.is_file(), (f'{page_id(page)}: the page runner died '
                           f'(exit {proc.returncode}):\n'
                           + proc.stdout[-4000:] + proc.stderr[-4000:])
    results = json.loads(out.read_text())
    failed = [r for r in results if r['status'] == 'failed']
    assert not failed, '\n\n'.join(
        f"{page_id(page)}:{r['line']} ({r['lang'] or 'text'} block) "
        f"failed:\n{r['detail']}" for r in failed)


# ------------------------------------------------- the harness's own rules
def write_page(tmp_path, text):
    page = tmp_path / 'page.md'
    page.write_text(textwrap.dedent(text))
    return page


def test_unmarked_command_and_hidden_reason_are_problems(tmp_path):
    page = write_page(tmp_path, '''\
        Install it:

        ```bash
        pip install -e .
        ```

        <!-- docs-test: skip reason="needs a GPU" -->
        ```bash
        python tools/train.py configs/x.py --amp
        ```
        ''')
    problems = docs_blocks.check_page(page)
    assert any("`pip install -e .` (and 0 more) cannot be run" in p
               for p in problems)
    assert any("skip reason 'needs a GPU' is not written" in p
               for p in problems)


def test_marks_with_visible_text_pass(tmp_path):
    page = write_page(tmp_path, '''\
        With AMP (this needs a GPU). The docs test appends
        `--cfg-options train_cfg.max_epochs=1`.

        <!-- docs-test: skip reason="this needs a GPU" -->
        ```bash
        python tools/train.py configs/x.py --amp
        ```

        <!-- docs-test: append "--cfg-options train_cfg.max_epochs=1" -->
        ```bash
        python tools/train.py configs/x.py
        ```
        ''')
    assert docs_blocks.check_page(page) == []
    blocks, _, _ = docs_blocks.parse_page(page)
    assert [b.line for b in blocks] == [5, 10]
    assert blocks[1].mark('append').args == [
        '--cfg-options train_cfg.max_epochs=1']


def test_expected_output_of_python_blocks():
    code = textwrap.dedent('''\
        x = [1, 2]
        print(x)  # [1, 2]
        for i in x:
            print(i * 10)
        # 10
        # 20
        y = 3  # not an output
        print(y)  # a remark, not the output below
        # 3
        ''')
    assert docs_blocks.expected_prints(code) == ['[1, 2]', '10', '20', '3']
    assert docs_blocks.matches_all(['took ... s', 'ok'], ['took 1.25 s', 'ok'])
    assert not docs_blocks.matches_all(['ok'], ['ok', 'extra'])
    assert docs_blocks.matches_run(['curves written to ...png'],
                                   'log\ncurves written to w/c.png\n')
    assert not docs_blocks.matches_run(['written to'], 'curves written to x')
