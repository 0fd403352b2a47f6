"""Draw the loss and accuracy curves of a training run to a PNG.

Usage::

    python tools/analysis/plot_curves.py work_dirs/resnet18_digits
    python tools/analysis/plot_curves.py WORK_DIR --out curves.png \
        --keys loss accuracy/top1
    python tools/analysis/plot_curves.py work_dirs/demo \
        --out docs/images/demo_curves.png   # the README's picture

Reads ``scalars.json`` written by mmengine's ``LocalVisBackend``
(``WORK_DIR/<timestamp>/vis_data/scalars.json``; the newest run, or every
run in time order with ``--all-runs`` so resumed runs join up). Training
scalars (``loss``, ``lr``) are drawn against the iteration, validation
metrics against the epoch.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TRAIN_MARKERS = ('lr', 'loss')
SKIP = {'step', 'epoch', 'iter', 'time', 'data_time', 'memory'}


def find_scalar_files(work_dir: Path, all_runs: bool = False) -> List[Path]:
    """``scalars.json`` files under ``work_dir``, oldest run first."""
    if work_dir.is_file():
        return [work_dir]
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    files += sorted(p for p in work_dir.glob('vis_data/scalars.json'))
    if not files:
        raise FileNotFoundError(
            f'no scalars.json under {work_dir} (expected '
            f'{work_dir}/<timestamp>/vis_data/scalars.json; train with '
            f"vis_backends=[dict(type='LocalVisBackend')])")
    return files if all_runs else files[-1:]


def read_scalars(files: List[Path]) -> Tuple[List[dict], List[dict]]:
    """Split the records: training (per iter), validation (per epoch)."""
    train, val = [], []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            (train if any(k in record for k in TRAIN_MARKERS) else
             val).append(record)
    return train, val


def series(records: List[dict], key: str, x_key: str) -> Tuple[list, list]:
    """(x, y) of ``key``; later records win for a repeated x (resumes)."""
    points: Dict[float, float] = {}
    for record in records:
        if key in record and x_key in record:
            points[record[x_key]] = record[key]
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def plot(work_dir: str, out: Optional[str] = None,
         keys: Optional[List[str]] = None, all_runs: bool = False,
         title: Optional[str] = None) -> Path:
    """Write the curves to a PNG and return its path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    root = Path(work_dir)
    train, val = read_scalars(find_scalar_files(root, all_runs))
    train_keys = sorted({k for r in train for k in r} - SKIP - {'lr'})
    val_keys = sorted({k for r in val for k in r} - SKIP)
    if keys:
        unknown = [k for k in keys if k not in train_keys + val_keys]
        if unknown:
            raise KeyError(f'keys {unknown} are not in the log; available: '
                           f'{train_keys + val_keys}')
        train_keys = [k for k in train_keys if k in keys]
        val_keys = [k for k in val_keys if k in keys]
    panels = [(k, train, 'iter') for k in train_keys] + \
             [(k, val, 'step') for k in val_keys]
    if not panels:
        raise ValueError(f'{root}: the log holds no loss or metric scalars')
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6),
                             squeeze=False)
    for ax, (key, records, x_key) in zip(axes[0], panels):
        xs, ys = series(records, key, x_key)
        ax.plot(xs, ys, marker='o' if len(xs) < 40 else None, markersize=3)
        ax.set_xlabel('iteration' if x_key == 'iter' else 'epoch')
        ax.set_title(f'{key} (val)' if records is val else key)
        ax.grid(alpha=0.3)
        if ys and key.startswith('accuracy'):
            ax.annotate(f'{ys[-1]:.2f}', (xs[-1], ys[-1]),
                        textcoords='offset points', xytext=(-10, -14))
    fig.suptitle(title or root.name)
    fig.tight_layout()
    out_path = Path(out) if out else (root if root.is_dir() else
                                      root.parent) / 'curves.png'
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv: Optional[List[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir', help='the training work dir (or a '
                        'scalars.json file)')
    parser.add_argument('--out', help='PNG path (default WORK_DIR/curves.png)')
    parser.add_argument('--keys', nargs='+', help='scalars to draw, e.g. '
                        'loss accuracy/top1 (default: all)')
    parser.add_argument('--all-runs', action='store_true',
                        help='join every run in the work dir (resumes)')
    parser.add_argument('--title', help='figure title')
    args = parser.parse_args(argv)
    path = plot(args.work_dir, args.out, args.keys, args.all_runs, args.title)
    print(f'curves written to {path}')
    return path


if __name__ == '__main__':
    main(sys.argv[1:])
