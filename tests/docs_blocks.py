"""Extract and run the fenced blocks of a Markdown page (the docs test).

``tests/test_docs.py`` runs every page of README.md and docs/*.md through
this module. The conventions a page follows:

* **Python blocks** (```python) run in page order in one namespace, in a
  scratch directory (the page's working directory: a copy of ``configs/``
  and a link to ``tools/``; the directory itself is importable, as in an
  interactive ``python``). A block starting with ``>>>`` is a doctest.
* **Expected output of a Python block**: the comment on a one-line
  ``print(...)`` statement (``print(x)  # 3``), and the column-0 ``# ``
  comment lines right after a statement that prints. The printed lines
  must equal them, where ``...`` stands for any text (numbers, timings,
  long lists). Logging is not part of the output, only ``print``.
* **Shell blocks** (```bash, ```sh, ```shell, ```console with ``$ ``
  prompts): each command that calls ``python tools/...``,
  ``python -m mmbackbone ...`` or ``mmbackbone ...`` runs in the scratch
  directory (``python`` is this interpreter; ``VAR=value`` prefixes are
  honoured; ``OMP_NUM_THREADS`` defaults to 1) and must exit with 0.
  Any other command (``pip``, ``make``, ``git``, ``torchrun``...) cannot
  be run by the test: its block must be marked ``skip`` with a reason.
* **Output blocks**: a ```text (or unlabelled) block that follows a
  runnable block with nothing but blank lines and marks between is that
  block's expected output: its lines (``...`` = any text) must match a
  run of consecutive lines of what the last command (or the Python
  block's ``print`` calls) wrote. Any other ```text / unlabelled block is
  shown for reading; it may not hold commands unless marked ``skip``.
* **Marks**: HTML comments right before a block (blank lines allowed)::

    <!-- docs-test: skip reason="needs a GPU" -->
    <!-- docs-test: skip line="--with-cp" reason="takes minutes" -->
    <!-- docs-test: append "--cfg-options train_cfg.max_epochs=1" -->
    <!-- docs-test: append line="train.py" "--cfg-options ..." -->
    <!-- docs-test: save my_project/lenet.py -->
    <!-- docs-test: config configs/my_backbone.py -->
    <!-- docs-test: same-as configs/downstream/mmdet/x.py -->

  ``skip`` skips the block (or, with ``line=``, its commands containing
  that text); the reason must be written in the page next to the block
  (from 12 lines before it to 6 lines after it). ``append`` adds the
  arguments to every command of the block; they must be written in the
  page text; with ``line=`` only to the commands containing that text.
``save PATH`` writes the block to PATH in the scratch
  directory (then a Python block still runs); ``config PATH`` writes it
  and loads it with ``mmbackbone.engine.load_config`` in a new
  interpreter (instead of running it); ``same-as PATH`` checks that the
  block is a verbatim part of the repository file PATH. The paths of
  ``save`` / ``config`` / ``same-as`` must be written next to the block.
* YAML / JSON and other languages need ``config`` / ``save`` or ``skip``.

Run one page by hand: ``python tests/docs_blocks.py docs/training.md``.
"""
import argparse
import ast
import builtins
import doctest
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
PYTHON_LANGS = {'python', 'py', 'python3', 'pycon'}
SHELL_LANGS = {'bash', 'sh', 'shell', 'console'}
OUTPUT_LANGS = {'text', 'output', 'txt', ''}
FILE_LANGS = {'yaml', 'yml', 'json', 'toml', 'ini'}
MARK_KINDS = {'skip', 'append', 'save', 'config', 'same-as'}
COMMAND_TIMEOUT_S = 300
#: lines before / after a block that count as "next to" it
NEAR_BEFORE, NEAR_AFTER = 12, 6

FENCE = re.compile(r'^```\s*([\w+.-]*)\s*$')
MARK = re.compile(r'^\s*<!--\s*docs-test:(.*?)-->\s*$')
COMMENT = re.compile(r'<!--.*?-->', re.S)
#: first words of a line in a text block that make it look like a command
COMMAND_WORDS = ('python ', 'python3 ', 'mmbackbone ', 'pip ', 'make ',
                 'git ', 'torchrun ', '$ ')


@dataclass
class Mark:
    kind: str
    args: List[str]
    options: Dict[str, str]
    line: int


@dataclass
class Block:
    page: str
    line: int          # 1-based line of the opening fence
    end: int           # 1-based line of the closing fence
    lang: str
    code: str
    marks: List[Mark] = field(default_factory=list)
    follows: Optional[int] = None  # index of the block it directly follows

    @property
    def where(self) -> str:
        return f'{self.page}:{self.line}'

    def mark(self, kind: str) -> Optional[Mark]:
        return next((m for m in self.marks if m.kind == kind), None)


def parse_mark(body: str, line: int) -> Mark:
    tokens = shlex.split(body)
    if not tokens or tokens[0] not in MARK_KINDS:
        raise ValueError(f'line {line}: unknown docs-test mark {body.strip()!r}'
                         f'; known: {sorted(MARK_KINDS)}')
    args, options = [], {}
    for token in tokens[1:]:
        key, eq, value = token.partition('=')
        if eq and key in ('reason', 'line'):
            options[key] = value
        else:
            args.append(token)
    return Mark(tokens[0], args, options, line)


def parse_page(path: Path) -> Tuple[List[Block], List[str], List[str]]:
    """``(blocks, page lines, problems)`` of a Markdown file."""
    lines = path.read_text().splitlines()
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) \
        else path.name
    blocks, problems, pending = [], [], []
    last_close, i = None, 0
    while i < len(lines):
        text = lines[i]
        mark = MARK.match(text)
        if mark:
            try:
                pending.append(parse_mark(mark.group(1), i + 1))
            except ValueError as err:
                problems.append(f'{name}:{err}')
            i += 1
            continue
        fence = FENCE.match(text)
        if not fence:
            if text.strip():
                for m in pending:
                    problems.append(f'{name}:{m.line}: the docs-test mark is '
                                    'not right before a ``` block')
                pending = []
                last_close = None
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not lines[i].startswith('```'):
            i += 1
        block = Block(name, start + 1, i + 1, fence.group(1).lower(),
                      '\n'.join(lines[start + 1:i]) + '\n', pending)
        if last_close is not None:
            block.follows = len(blocks) - 1
        blocks.append(block)
        pending, last_close = [], i
        i += 1
    for m in pending:
        problems.append(f'{name}:{m.line}: the docs-test mark is not right '
                        'before a ``` block')
    return blocks, lines, problems


# ------------------------------------------------------------ static checks
def visible(text: str) -> str:
    """Page text without HTML comments and Markdown backticks, one space,
    lower case (a reason may start a sentence)."""
    return ' '.join(COMMENT.sub(' ', text).replace('`', '').lower().split())


def near_text(block: Block, lines: List[str]) -> str:
    lo = max(0, block.line - 1 - NEAR_BEFORE)
    return visible('\n'.join(lines[lo:block.end + NEAR_AFTER]))


def shell_commands(block: Block) -> List[Tuple[int, str]]:
    """``(line, command)`` of a shell block: continuations joined, console
    prompts stripped, blank and comment-only lines dropped."""
    commands, current, first = [], '', None
    raw = block.code.splitlines()
    for offset, text in enumerate(raw):
        if block.lang == 'console':
            if text.startswith('$ '):
                text = text[2:]
            elif not current:
                continue  # output of the command above
        if first is None:
            first = block.line + 1 + offset
        if text.rstrip().endswith('\\'):
            current += text.rstrip()[:-1] + ' '
            continue
        current += text
        if current.strip() and not current.strip().startswith('#'):
            commands.append((first, current.strip()))
        current, first = '', None
    return commands


def split_command(command: str) -> Tuple[Dict[str, str], List[str]]:
    """Leading ``VAR=value`` assignments and the argument list."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = '#'
    tokens = list(lexer)
    env = {}
    while tokens and re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', tokens[0]):
        key, _, value = tokens.pop(0).partition('=')
        env[key] = value
    return env, tokens


def runnable(command: str) -> bool:
    try:
        _, argv = split_command(command)
    except ValueError:
        return False
    if any(t in ('|', '&&', ';', '>', '<', '||') for t in argv):
        return False
    if argv[:1] in (['python'], ['python3']):
        return len(argv) > 1 and (argv[1].startswith('tools/') or
                                  argv[1:3] == ['-m', 'mmbackbone'])
    return argv[:1] == ['mmbackbone']


def skipped(block: Block, command: str) -> bool:
    for m in block.marks:
        if m.kind == 'skip' and ('line' not in m.options
                                 or m.options['line'] in command):
            return True
    return False


def is_output_block(block: Block, blocks: List[Block]) -> bool:
    if block.lang not in OUTPUT_LANGS or block.follows is None:
        return False
    prev = blocks[block.follows]
    return prev.lang in PYTHON_LANGS | SHELL_LANGS and not (
        prev.mark('skip') and 'line' not in prev.mark('skip').options)


def check_page(path: Path) -> List[str]:
    """Problems of a page that need no run: marks without a visible
    reason, commands the test cannot run left unmarked, unknown blocks."""
    blocks, lines, problems = parse_page(path)
    page_text = visible('\n'.join(lines))
    for block in blocks:
        near = near_text(block, lines)
        for m in block.marks:
            if m.kind == 'skip':
                reason = m.options.get('reason', '').strip()
                if not reason:
                    problems.append(f'{block.where}: skip mark without '
                                    'reason="..."')
                elif visible(reason) not in near:
                    problems.append(
                        f'{block.where}: skip reason {reason!r} is not '
                        'written in the page next to the block')
            elif m.kind == 'append':
                if len(m.args) != 1:
                    problems.append(f'{block.where}: append takes one quoted '
                                    'argument string')
                elif visible(m.args[0]) not in page_text:
                    problems.append(
                        f'{block.where}: the appended arguments '
                        f'{m.args[0]!r} are not written in the page text')
            else:
                if len(m.args) != 1:
                    problems.append(f'{block.where}: {m.kind} takes one path')
                elif m.args[0].lower() not in near:
                    problems.append(f'{block.where}: the path {m.args[0]!r} '
                                    f'of the {m.kind} mark is not written '
                                    'next to the block')
                if m.kind == 'same-as' and m.args and \
                        not (ROOT / m.args[0]).is_file():
                    problems.append(f'{block.where}: same-as names a missing '
                                    f'file {m.args[0]!r}')
        if block.lang in SHELL_LANGS:
            bad = [(line, command) for line, command in shell_commands(block)
                   if not runnable(command) and not skipped(block, command)]
            if bad:
                problems.append(
                    f'{block.where}: line {bad[0][0]} `{bad[0][1]}` (and '
                    f'{len(bad) - 1} more) cannot be run by the docs test; '
                    'mark the block <!-- docs-test: skip reason="..." --> '
                    'and write the reason next to it')
        elif block.lang in OUTPUT_LANGS:
            if is_output_block(block, blocks) or block.mark('skip'):
                continue
            for offset, text in enumerate(block.code.splitlines()):
                if text.lstrip().startswith(COMMAND_WORDS):
                    problems.append(
                        f'{block.where}: line {block.line + 1 + offset} '
                        f'looks like a command in a text block; put it in a '
                        'shell block or mark the block skip with a reason')
                    break
        elif block.lang in PYTHON_LANGS:
            continue
        elif block.lang in FILE_LANGS:
            if not (block.mark('skip') or block.mark('config')
                    or block.mark('save')):
                problems.append(f'{block.where}: a {block.lang} block needs '
                                'a config / save mark or a skip reason')
        elif not block.mark('skip'):
            problems.append(f'{block.where}: no way to run a '
                            f'{block.lang!r} block; mark it skip with a '
                            'reason')
    return problems


# ----------------------------------------------------------------- outputs
def ellipsis_regex(expected: str) -> str:
    return '.*?'.join(re.escape(part) for part in expected.split('...'))


def matches_all(expected: List[str], got: List[str]) -> bool:
    """The printed lines equal the expected ones (``...`` = any text)."""
    return re.fullmatch(ellipsis_regex('\n'.join(expected)),
                        '\n'.join(got), re.S) is not None


def matches_run(expected: List[str], got: str) -> bool:
    """The expected lines match consecutive whole lines of ``got``."""
    pattern = r'(?m)^' + ellipsis_regex('\n'.join(
        line.rstrip() for line in expected).strip('\n')) + r'[ \t]*$'
    got = '\n'.join(line.rstrip() for line in got.splitlines())
    return re.search(pattern, got, re.S) is not None


def expected_prints(code: str) -> List[str]:
    """The documented output of a Python block (see the module doc)."""
    lines = code.splitlines()
    tree = ast.parse(code)
    expected = []
    for stmt in tree.body:
        prints = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                     and n.func.id == 'print' for n in ast.walk(stmt))
        if not prints:
            continue
        last = lines[stmt.end_lineno - 1]
        k, below = stmt.end_lineno, []
        while k < len(lines) and lines[k].startswith('# '):
            below.append(lines[k][2:])
            k += 1
        if below:  # an inline comment above them is a remark
            expected.extend(below)
        elif stmt.lineno == stmt.end_lineno and isinstance(stmt, ast.Expr):
            comment = _inline_comment(last)
            if comment is not None:
                expected.append(comment)
    return expected


def _inline_comment(line: str) -> Optional[str]:
    import io
    import tokenize
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                return tok.string[1:].strip()
    except (tokenize.TokenError, SyntaxError):
        return None
    return None


# ----------------------------------------------------------------- running
@dataclass
class Result:
    line: int
    lang: str
    status: str   # passed / failed / skipped / shown
    detail: str = ''


class PageRunner:
    """Runs one page's blocks in order in ``scratch``."""

    def __init__(self, path: Path, scratch: Path):
        self.path, self.scratch = path, scratch
        self.blocks, self.lines, _ = parse_page(path)
        self.namespace = {'__name__': '__docs__'}
        self.last_output: Optional[str] = None
        self.results: List[Result] = []

    def setup(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        if not (self.scratch / 'configs').exists():
            shutil.copytree(ROOT / 'configs', self.scratch / 'configs')
        if not (self.scratch / 'tools').exists():
            (self.scratch / 'tools').symlink_to(ROOT / 'tools')
        os.chdir(self.scratch)
        sys.path[:0] = [str(self.scratch), str(ROOT)]
        os.environ.setdefault('OMP_NUM_THREADS', '1')
        import torch
        torch.set_num_threads(1)

    def run(self) -> List[Result]:
        self.setup()
        for block in self.blocks:
            start = time.perf_counter()
            try:
                status, detail = self.run_block(block)
            except Exception:  # reported per block, the page goes on
                status = 'failed'
                detail = traceback.format_exc(limit=-8)
            if status != 'failed':
                same = block.mark('same-as')
                if same and block.code.strip() not in \
                        (ROOT / same.args[0]).read_text():
                    status, detail = 'failed', (
                        f'the block is not a verbatim part of {same.args[0]}')
            took = time.perf_counter() - start
            self.results.append(Result(block.line, block.lang, status,
                                       f'{detail} ({took:.1f} s)'.strip()))
        return self.results

    def run_block(self, block: Block) -> Tuple[str, str]:
        for kind in ('save', 'config'):
            m = block.mark(kind)
            if m:
                target = self.scratch / m.args[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.code)
        skip = block.mark('skip')
        if skip and 'line' not in skip.options:
            return 'skipped', skip.options.get('reason', '')
        if block.mark('config'):
            return self.load_config(block.mark('config').args[0])
        if block.lang in PYTHON_LANGS:
            return self.run_python(block)
        if block.lang in SHELL_LANGS:
            return self.run_shell(block)
        if is_output_block(block, self.blocks):
            return self.compare_output(block)
        return 'shown', ''

    def load_config(self, path: str) -> Tuple[str, str]:
        code = ('import sys; from mmbackbone.engine import load_config; '
                'cfg = load_config(sys.argv[1]); print(sorted(cfg.keys()))')
        proc = subprocess.run([sys.executable, '-c', code, path],
                              cwd=self.scratch, env=self.env({}),
                              capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        if proc.returncode:
            return 'failed', (f'load_config({path!r}) failed:\n' +
                              _tail(proc.stdout + proc.stderr))
        return 'passed', f'loaded {path}'

    def run_python(self, block: Block) -> Tuple[str, str]:
        printed: List[str] = []
        real_print = builtins.print

        def record(*args, sep=' ', end='\n', file=None, flush=False):
            if file is not None and file is not sys.stdout:
                real_print(*args, sep=sep, end=end, file=file, flush=flush)
                return
            printed.extend(sep.join(map(str, args)).splitlines())

        self.namespace['print'] = record
        code = block.code
        if code.lstrip().startswith('>>>'):
            return self.run_doctest(block)
        # leading newlines: tracebacks give the page's line numbers
        compiled = compile('\n' * block.line + code, str(self.path), 'exec')
        exec(compiled, self.namespace)
        self.last_output = '\n'.join(printed)
        expected = expected_prints(code)
        if expected and not matches_all(expected, printed):
            return 'failed', ('printed output differs from the documented '
                              'one:\n--- documented\n' + '\n'.join(expected)
                              + '\n--- printed\n' + '\n'.join(printed))
        return 'passed', ''

    def run_doctest(self, block: Block) -> Tuple[str, str]:
        self.namespace.pop('print', None)
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.code, self.namespace, block.where,
                                  str(self.path), block.line)
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        out: List[str] = []
        runner = doctest.DocTestRunner(optionflags=flags)
        result = runner.run(test, out=out.append, clear_globs=False)
        if result.failed:
            return 'failed', ''.join(out)
        return 'passed', ''

    def env(self, extra: Dict[str, str]) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(extra)
        paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
        env['PYTHONPATH'] = os.pathsep.join(paths + [str(ROOT)])
        return env

    def run_shell(self, block: Block) -> Tuple[str, str]:
        ran, extra = [], []
        append = block.mark('append')
        for line, command in shell_commands(block):
            if skipped(block, command):
                continue
            if not runnable(command):
                return 'failed', (f'line {line}: `{command}` cannot be run '
                                  'and is not marked skip')
            env, argv = split_command(command)
            if append and append.options.get('line', '') in command:
                argv += shlex.split(append.args[0])
            if argv[0] in ('python', 'python3'):
                argv[0] = sys.executable
            else:
                script = Path(sys.executable).with_name(argv[0])
                argv[0] = str(script) if script.exists() else argv[0]
            proc = subprocess.run(argv, cwd=self.scratch, env=self.env(env),
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  timeout=COMMAND_TIMEOUT_S)
            self.last_output = proc.stdout
            if proc.returncode:
                return 'failed', (f'line {line}: `{shlex.join(argv[1:])}` '
                                  f'exited with {proc.returncode}:\n' +
                                  _tail(proc.stdout))
            ran.append(f'line {line}')
        return 'passed', 'ran ' + ', '.join(ran) if ran else ''

    def compare_output(self, block: Block) -> Tuple[str, str]:
        if self.last_output is None:
            return 'failed', 'no output to compare with'
        expected = block.code.splitlines()
        if not matches_run(expected, self.last_output):
            return 'failed', ('the output does not contain the documented '
                              'lines:\n--- documented\n' + block.code +
                              '--- output (tail)\n' + _tail(self.last_output))
        return 'passed', ''


def _tail(text: str, lines: int = 40) -> str:
    return '\n'.join(text.rstrip().splitlines()[-lines:])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Run the blocks of a page.')
    parser.add_argument('page')
    parser.add_argument('--scratch', help='working directory (default: a '
                        'new temporary one)')
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)
    page = Path(args.page).resolve()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix='docs-'))
    results = PageRunner(page, scratch).run()
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results]))
    for r in results:
        sys.__stdout__.write(f'{page.name}:{r.line} [{r.lang or "text"}] '
                             f'{r.status} {r.detail}\n')
    for problem in check_page(page):
        sys.__stdout__.write(f'problem: {problem}\n')
    return int(any(r.status == 'failed' for r in results))


if __name__ == '__main__':
    sys.exit(main())
