"""Speed, memory and start-up of mmbackbone backbones against timm and
torchvision, with the same weights, in one process.

Examples::

    # the preset list (ResNet-50, ViT-B/16, RegNetX-4.0GF, CSPDarkNet-53,
    # DLA-34): eager forward (inference mode) and forward+backward (train
    # mode), ours against timm (and torchvision for ResNet-50)
    python tools/benchmark.py --batch 8 --size 224 --threads 2

    # one preset, machine-readable
    python tools/benchmark.py --preset resnet50 --json results.json

    # optimised ours in float32 and bfloat16 (the default --dtypes), and
    # the same wrapped by torch.compile
    python tools/benchmark.py --preset resnet50 --modes infer \\
        --dtypes fp32 bf16 --compile

    # any backbone config (a config file's model.backbone, or a dict)
    python tools/benchmark.py --config "dict(type='ResNet', depth=18)" \\
        --timm resnet18

    # gradient checkpointing: peak training memory with and without
    python tools/benchmark.py --with-cp

    # start-up: import + build ResNet-50, cold processes
    python tools/benchmark.py --startup

How it measures:

* Time: the models run interleaved in one process: every repetition runs
  each model once, in alternating order, so drifts of the machine hit all
  of them alike. Reported: the median time over ``--repeats`` after
  ``--warmup`` runs, and each ratio as the median of the per-repetition
  ratios (a paired estimate: the two runs of a pair are adjacent in time,
  so a slow spell of a shared machine cancels out). ``infer`` runs ``model.eval()`` under
  ``torch.inference_mode()``; ``train`` runs ``model.train()``, forward,
  ``sum(mean(outputs)).backward()`` (gradients reset outside the timing).
* Same weights: timm's model is built with random weights, saved to a
  file and loaded into ours through ``init_cfg=dict(type='Pretrained')``
  (our key conversion), and into torchvision's when it has the model; the
  features of ours and the peer are compared (``max diff`` column).
* Optimised rows: ``optimize_for_inference(ours, dtype=...)`` for every
  ``--dtypes`` entry (``ours-opt`` is float32, ``ours-opt-bf16`` ...),
  timed against every peer's eager float32 model (``ratios``; the
  ``ratio`` column shows timm's, else torchvision's). ``max err`` is
  ``max |a - b| / max |b|`` of each output against ours in float32 eager
  on the benchmark batch, the largest over the outputs.
* Compute ceiling: the FLOPs of one forward of ours are counted once per
  case (``FlopCounterMode``, 2 FLOPs per multiply-add, convolutions,
  matmuls and attention only); ``GFLOP/s`` is that over the median time
  and ``of peak`` its fraction of the machine's peak for the row's dtype:
  ``threads x FMA units x fp32 lanes x 2 x clock`` from ``/proc/cpuinfo``
  (the FMA unit count is an assumption, ``--fma-units``; AVX512-BF16
  doubles the bf16 figure), or a datasheet table for CUDA GPUs
  (:mod:`mmbackbone.utils.compute_ceiling`).
* Peers run their feature extractor: timm's ``forward_features``,
  torchvision's layers up to the last stage; ours returns its default
  ``out_indices``.
* Peak memory: every (model, mode) runs in a fresh child process that
  builds the model and the input, resets the kernel's RSS high-water mark
  (``/proc/self/clear_refs``), runs two steps and reads ``VmHWM``. The
  figure is the peak RSS growth over the RSS after building: activations,
  gradients and workspaces, not the parameters. glibc's mmap threshold is
  pinned to 64 KiB in the child so freed tensors leave RSS promptly.
* Start-up: ``--startup`` runs each command ``--startup-runs`` times in a
  new interpreter, interleaved, after one untimed run that warms the file
  cache and writes the bytecode caches (``PYTHONDONTWRITEBYTECODE`` is
  dropped for the children, as on a normal install); wall time of the
  whole process, median.

Peers are optional: one that cannot be imported (timm, torchvision,
mmpretrain) is reported as not installed, with what to ``pip install``,
and the rest is measured. Progress bars (tqdm) go to stderr when it is a
terminal; ``--no-progress`` turns them off.
"""
import argparse
import ast
import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@dataclass(frozen=True)
class Preset:
    """One architecture as ours, timm's and (optionally) torchvision's."""
    name: str
    ours: dict
    timm: str
    torchvision: Optional[str] = None
    #: the model is built for one input size (ViT): give it ``--size``
    sized: bool = False


PRESETS: Dict[str, Preset] = {p.name: p for p in [
    Preset('resnet50', dict(type='ResNet', depth=50), 'resnet50',
           'resnet50'),
    Preset('vit_b16', dict(type='VisionTransformer', arch='b', img_size=224,
                           patch_size=16), 'vit_base_patch16_224',
           sized=True),
    Preset('regnetx_4.0gf', dict(type='RegNet', arch='regnetx_4.0gf'),
           'regnetx_040'),
    Preset('cspdarknet53', dict(type='CSPDarkNet', depth=53),
           'cspdarknet53'),
    Preset('dla34', dict(type='DLA', arch='dla34'), 'dla34'),
]}

#: Compute dtypes of the optimised rows (--dtypes).
DTYPES = ('fp32', 'bf16', 'fp16')

#: Presets of the --with-cp measurement (batch 16 by default).
CP_PRESETS = ('resnet50', 'vit_b16')

STARTUP_COMMANDS = {
    'mmbackbone': "import mmbackbone; "
                  "mmbackbone.build_backbone(dict(type='ResNet', depth=50))",
    'mmpretrain': 'from mmpretrain.models import ResNet; ResNet(depth=50)',
    'timm': "import timm; timm.create_model('resnet50')",
    'torch (floor)': 'import torch',
}

#: What to install for each peer (the start-up commands of the same name
#: and the --timm / --torchvision models need them; they are optional).
PEER_PACKAGES = {'mmpretrain': 'mmpretrain', 'timm': 'timm',
                 'torchvision': 'torchvision'}


def not_installed(peer: str, detail: str = '') -> str:
    """The note of a peer that cannot be imported."""
    return (f'{peer} not installed (pip install {PEER_PACKAGES[peer]})'
            + (f': {detail}' if detail else ''))


def import_peer(peer: str) -> Tuple[Any, Optional[str]]:
    """``(module, None)``, or ``(None, note)`` when ``peer`` cannot be
    imported (not installed, or broken)."""
    try:
        return importlib.import_module(peer), None
    except ImportError as err:
        return None, not_installed(peer, f'{type(err).__name__}: {err}')


def progress(iterable: Iterable, desc: str, enabled: Optional[bool],
             total: Optional[int] = None, unit: str = 'it') -> Iterable:
    """A tqdm bar on stderr when it is a terminal (or ``enabled``); see
    :func:`mmbackbone.cli.progress`."""
    from mmbackbone import cli
    return cli.progress(iterable, desc, total=total, unit=unit,
                        enabled=enabled)


# ------------------------------------------------------------ models
class TimmFeatures(nn.Module):
    """A timm model's ``forward_features``: the peer of a backbone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


class TorchvisionBody(nn.Module):
    """A torchvision classifier without its pooling and head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*list(model.children())[:-2])

    def forward(self, x):
        return self.body(x)


def ours_available(cfg: dict) -> Optional[str]:
    """None when our registry has the type, else the reason."""
    from mmbackbone.registry import MODELS
    import mmbackbone  # noqa: F401  (registers every type)
    MODELS.import_from_location()
    if MODELS.get(cfg['type']) is None:
        return f"{cfg['type']} is not registered (not available yet)"
    return None


def build_ours(cfg: dict, checkpoint: Optional[str] = None,
               **overrides) -> nn.Module:
    from mmbackbone import build_backbone
    cfg = dict(cfg, **overrides)
    if checkpoint is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
    model = build_backbone(cfg)
    if checkpoint is not None:
        model.init_weights()
    return model


def build_timm(name: str, **kwargs) -> nn.Module:
    import timm
    return timm.create_model(name, pretrained=False, **kwargs)


def build_torchvision(name: str) -> nn.Module:
    import torchvision
    return getattr(torchvision.models, name)(weights=None)


def leaves(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in leaves(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in leaves(o)]
    return []


def feature_diff(ours_out, peer_out) -> Optional[float]:
    """Max abs difference of the last feature, matching token layouts."""
    a, b = leaves(ours_out)[-1].float(), leaves(peer_out)[-1].float()
    if a.dim() == 2 and b.dim() == 3:  # class token vs all tokens
        b = b[:, 0]
    elif a.dim() == 4 and b.dim() == 3:  # map vs tokens (prefix dropped)
        n = a.shape[2] * a.shape[3]
        b = b[:, -n:].transpose(1, 2).reshape(a.shape)
    if a.shape != b.shape:
        return None
    return (a - b).abs().max().item()


# ------------------------------------------------------------ timing
def step(model: nn.Module, x: torch.Tensor, train: bool):
    if train:
        out = model(x)
        loss = sum(t.float().mean() for t in leaves(out))
        loss.backward()
        out = None
    else:
        with torch.inference_mode():
            out = model(x)
    if x.is_cuda:  # the kernels run asynchronously: wait for them
        torch.cuda.synchronize(x.device)
    return out


def timed_interleaved(models: List[Tuple[str, nn.Module]], x: torch.Tensor,
                      train: bool, repeats: int, warmup: int,
                      desc: str = 'timing',
                      show_progress: Optional[bool] = False
                      ) -> Dict[str, List[float]]:
    """Run each model once per repetition, alternating the order (a
    progress bar over the repetitions when ``show_progress``; None: when
    stderr is a terminal)."""
    for _, model in models:
        model.train(train)
    times: Dict[str, List[float]] = {name: [] for name, _ in models}
    for rep in progress(range(warmup + repeats), desc, show_progress,
                        unit='rep'):
        order = models if rep % 2 == 0 else models[::-1]
        for name, model in order:
            if train:
                model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step(model, x, train)
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
    for _, model in models:
        model.zero_grad(set_to_none=True)
    return times


@dataclass
class Row:
    case: str
    mode: str
    impl: str
    median_ms: Optional[float] = None
    ratio: Optional[float] = None
    ratio_of: str = ''
    peak_mb: Optional[float] = None
    weights: str = ''
    max_diff: Optional[float] = None
    note: str = ''
    times_ms: List[float] = field(default_factory=list)
    #: compute dtype of the row (the peers and ``ours`` run float32)
    dtype: str = 'fp32'
    #: every paired ratio of an optimised row, ``{'impl/peer': ratio}``
    ratios: Dict[str, float] = field(default_factory=dict)
    #: max relative error of an optimised row's outputs vs ours fp32
    max_err: Optional[float] = None
    #: FLOPs of one forward of the batch (infer rows), GFLOP/s achieved
    #: and its fraction of the peak of ``dtype``
    flops: Optional[int] = None
    gflops: Optional[float] = None
    peak_fraction: Optional[float] = None


def optimized_variants(ours: nn.Module, args
                       ) -> List[Tuple[str, str, nn.Module]]:
    """``(impl, dtype, model)`` for every ``--dtypes`` entry (and its
    compiled twin with ``--compile``): ``ours-opt`` is float32,
    ``ours-opt-bf16`` bfloat16, ``...+compile`` wrapped by torch.compile."""
    from mmbackbone import optimize_for_inference
    variants = []
    for dtype in args.dtypes:
        impl = 'ours-opt' if dtype == 'fp32' else f'ours-opt-{dtype}'
        variants.append((impl, dtype,
                         optimize_for_inference(ours, dtype=dtype)))
        if args.compile:
            variants.append((f'{impl}+compile', dtype,
                             optimize_for_inference(ours, dtype=dtype,
                                                    compile=True)))
    return variants


def achieved(flops: Optional[int], median_ms: float, dtype: str,
             peak: Optional[Any]) -> Tuple[Optional[float], Optional[float]]:
    """``(GFLOP/s, fraction of the dtype's peak)`` of one timed row."""
    if not flops or not median_ms:
        return None, None
    gflops = flops / (median_ms / 1e3) / 1e9
    top = peak.gflops.get(dtype) if peak is not None else None
    return round(gflops, 2), (round(gflops / top, 4) if top else None)


def benchmark_case(name: str, ours_cfg: dict, timm_name: Optional[str],
                   tv_name: Optional[str], args, sized: bool = False,
                   peak: Optional[Any] = None) -> List[Row]:
    """Time (and measure) ours, ours optimised, timm and torchvision;
    ``peak`` (a :class:`mmbackbone.utils.compute_ceiling.Peak`) gives the
    fraction-of-peak figures."""
    timm_kwargs = {}
    if sized:
        ours_cfg = dict(ours_cfg, img_size=args.size)
        timm_kwargs = dict(img_size=args.size)
    reason = ours_available(ours_cfg)
    if reason is not None:
        return [Row(name, mode, 'ours', note=f'not available: {reason}')
                for mode in args.modes]
    torch.manual_seed(0)
    peers: List[Tuple[str, nn.Module]] = []
    missing: Dict[str, str] = {}  # peer -> note (not installed)
    weights, ckpt, source = 'random (no peer)', None, None
    tmp = tempfile.TemporaryDirectory()
    full = None
    if timm_name:
        timm, note = import_peer('timm')
        if timm is None:
            missing['timm'] = note
        elif not timm.is_model(timm_name):
            print(f'[{name}] timm has no {timm_name}; skipping the peer')
        else:
            full = build_timm(timm_name, **timm_kwargs).eval()
            ckpt, source = os.path.join(tmp.name, f'{timm_name}.pth'), 'timm'
            torch.save(full.state_dict(), ckpt)
            peers.append(('timm', TimmFeatures(full)))
    if tv_name:
        _, note = import_peer('torchvision')
        if note is not None:
            missing['torchvision'] = note
        else:
            tv = build_torchvision(tv_name)
            if full is not None:
                tv.load_state_dict(full.state_dict())  # same keys as timm
            else:  # no timm: torchvision's random weights for everyone
                ckpt = os.path.join(tmp.name, f'{tv_name}.pth')
                source = 'torchvision'
                torch.save(tv.state_dict(), ckpt)
            peers.append(('torchvision', TorchvisionBody(tv.eval())))
    for peer, note in missing.items():
        print(f'[{name}] {note}; skipping the {peer} peer')
    try:
        ours = build_ours(ours_cfg, ckpt)
        weights = f'peer ({source})' if ckpt else weights
    except Exception as err:  # noqa: BLE001  (report, keep timing)
        print(f'[{name}] loading the timm weights into ours failed: '
              f'{type(err).__name__}: {err}')
        ours = build_ours(ours_cfg)
        weights = f'random (load failed: {type(err).__name__})'
    device = torch.device(args.device)
    ours.eval().to(device)
    peers = [(peer_name, peer.to(device)) for peer_name, peer in peers]
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    diffs: Dict[str, Optional[float]] = {}
    with torch.inference_mode():
        ref = ours(x[:1])
        for peer_name, peer in peers:
            diffs[peer_name] = feature_diff(ref, peer.eval()(x[:1]))
    from mmbackbone.deploy_precision import feature_error
    from mmbackbone.utils.compute_ceiling import count_forward_flops
    flops = count_forward_flops(ours, x[:1]) * args.batch
    print(f'[{name}] {flops / 1e9:.1f} GFLOP per forward of batch '
          f'{args.batch} (FlopCounterMode, 2 per multiply-add)')

    rows: List[Row] = []
    for mode in args.modes:
        train = mode == 'train'
        models = [('ours', ours)] + peers
        dtypes = {impl: 'fp32' for impl, _ in models}
        errors: Dict[str, float] = {}
        if not train and args.optimized:
            variants = optimized_variants(ours, args)
            models[1:1] = [(impl, model) for impl, _, model in variants]
            dtypes.update((impl, dtype) for impl, dtype, _ in variants)
            with torch.inference_mode():  # compiles the compiled ones too
                want = ours(x)
                for impl, _, model in variants:
                    errors[impl] = max(feature_error(model(x), want))
            del want
        times = timed_interleaved(models, x, train, args.repeats,
                                  args.warmup, desc=f'{name} {mode}',
                                  show_progress=args.progress)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

        def paired(a: str, b: str) -> float:
            return round(statistics.median(
                x / y for x, y in zip(times[a], times[b])), 3)

        peer_names = [p for p in ('timm', 'torchvision') if p in med]
        for impl, _ in models:
            row = Row(name, mode, impl, round(med[impl], 2),
                      times_ms=[round(t * 1e3, 2) for t in times[impl]],
                      dtype=dtypes[impl])
            if not train:
                row.flops = flops
                row.gflops, row.peak_fraction = achieved(
                    flops, med[impl], row.dtype, peak)
            if impl == 'ours':
                row.weights = weights
            elif impl in errors:
                row.max_err = errors[impl]
                row.ratios = {f'{impl}/{p}': paired(impl, p)
                              for p in peer_names}
                if peer_names:
                    row.ratio_of = f'{impl}/{peer_names[0]}'
                    row.ratio = row.ratios[row.ratio_of]
            else:
                row.ratio = paired('ours', impl)
                row.ratio_of = f'ours/{impl}'
                row.max_diff = diffs.get(impl)
            rows.append(row)
        for peer, note in missing.items():
            rows.append(Row(name, mode, peer, note=note))
        shown = len(models) + len(missing)
        print_rows(rows[-shown:], header=not rows[:-shown])
    del ours, peers
    gc.collect()
    tmp.cleanup()
    if args.memory and device.type == 'cpu':
        timed = [row for row in rows if row.median_ms is not None
                 and not row.impl.endswith('+compile')]
        for row in progress(timed, f'{name} peak memory', args.progress,
                            unit='child'):
            spec = dict(ours=ours_cfg, timm=timm_name, torchvision=tv_name,
                        timm_kwargs=timm_kwargs, impl=row.impl,
                        dtype=row.dtype, mode=row.mode, batch=args.batch,
                        size=args.size, threads=args.threads)
            row.peak_mb = memory_child(spec)
    return rows


# ------------------------------------------------------------ memory
def _proc_status(key: str) -> int:
    with open('/proc/self/status') as f:
        return int(re.search(rf'{key}:\s+(\d+)', f.read()).group(1))


def run_child(spec: dict) -> Dict[str, Any]:
    """Run one (model, mode) in a fresh process: ``peak_mb`` (peak RSS
    growth, MiB) and ``step_ms`` (fastest step), or ``error``."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536',
               OMP_NUM_THREADS=str(spec['threads']))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--memory-child',
         json.dumps(spec)], capture_output=True, text=True, env=env)
    peak = re.search(r'^PEAK_MB (\S+)$', proc.stdout, re.M)
    step = re.search(r'^STEP_MS (\S+)$', proc.stdout, re.M)
    if proc.returncode or not (peak and step):
        return dict(error=proc.stderr[-2000:])
    return dict(peak_mb=float(peak.group(1)), step_ms=float(step.group(1)))


def memory_child(spec: dict) -> Optional[float]:
    """Peak RSS growth (MiB) of one (model, mode) in a fresh process."""
    result = run_child(spec)
    if 'error' in result:
        print(f"memory child failed for {spec}: {result['error']}")
        return None
    return result['peak_mb']


def run_memory_child(spec: dict) -> None:
    torch.set_num_threads(spec['threads'])
    impl, train = spec['impl'], spec['mode'] == 'train'
    if impl == 'ours' or impl.startswith('ours-opt'):
        model = build_ours(spec['ours'], **spec.get('overrides', {}))
        if impl.startswith('ours-opt'):
            from mmbackbone import optimize_for_inference
            model = optimize_for_inference(
                model, inplace=True, dtype=spec.get('dtype', 'fp32'))
    elif impl == 'timm':
        model = TimmFeatures(build_timm(spec['timm'],
                                        **spec.get('timm_kwargs', {})))
    else:
        model = TorchvisionBody(build_torchvision(spec['torchvision']))
    model.train(train)
    x = torch.rand(spec['batch'], 3, spec['size'], spec['size'])
    gc.collect()
    base_kb = _proc_status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    times = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step(model, x, train)
        times.append(time.perf_counter() - start)
    peak_kb = _proc_status('VmHWM')
    print(f'PEAK_MB {(peak_kb - base_kb) / 1024:.1f}')
    print(f'STEP_MS {min(times) * 1e3:.1f}')


def benchmark_with_cp(args) -> List[dict]:
    """Peak training memory with and without gradient checkpointing."""
    results = []
    for name in progress(CP_PRESETS, 'with_cp', args.progress,
                         unit='preset'):
        preset = PRESETS[name]
        reason = ours_available(preset.ours)
        if reason is not None:
            results.append(dict(case=name, note=f'not available: {reason}'))
            print(f'{name:<14} not available: {reason}')
            continue
        entry: Dict[str, Any] = dict(case=name, batch=args.cp_batch,
                                     size=args.size)
        for with_cp in (False, True):
            ours_cfg = (dict(preset.ours, img_size=args.size)
                        if preset.sized else preset.ours)
            spec = dict(ours=ours_cfg, impl='ours', mode='train',
                        batch=args.cp_batch, size=args.size,
                        threads=args.threads,
                        overrides=dict(with_cp=with_cp))
            result = run_child(spec)
            if 'error' in result:
                entry[f'error_cp_{with_cp}'] = result['error']
                continue
            key = 'with_cp' if with_cp else 'without_cp'
            entry[f'{key}_peak_mb'] = result['peak_mb']
            entry[f'{key}_step_ms'] = result['step_ms']
        if 'with_cp_peak_mb' in entry and 'without_cp_peak_mb' in entry:
            entry['memory_cut'] = round(
                1 - entry['with_cp_peak_mb'] / entry['without_cp_peak_mb'],
                3)
            entry['time_ratio'] = round(
                entry['with_cp_step_ms'] / entry['without_cp_step_ms'], 3)
        results.append(entry)
        print(f"{name:<14} batch {args.cp_batch} @{args.size}: peak train "
              f"memory {entry.get('without_cp_peak_mb')} MiB -> "
              f"{entry.get('with_cp_peak_mb')} MiB with with_cp "
              f"(cut {entry.get('memory_cut')}); step "
              f"{entry.get('without_cp_step_ms')} -> "
              f"{entry.get('with_cp_step_ms')} ms")
    return results


# ------------------------------------------------------------ start-up
def _last_error(stderr: str) -> Tuple[str, str]:
    """``(exception type, message)`` from a child's traceback."""
    for line in reversed(stderr.strip().splitlines()):
        match = re.match(r'^([A-Za-z_][\w.]*): ?(.*)$', line)
        if match:
            return match.group(1).rsplit('.', 1)[-1], match.group(2)
    return '', stderr.strip()[-300:]


def benchmark_startup(args, commands: Optional[Dict[str, str]] = None
                      ) -> Dict[str, Any]:
    """Median wall time of cold interpreters importing and building.

    A peer whose command fails with an ``ImportError`` (not installed, or
    broken) is reported in ``skipped`` as not installed, any other failure
    of a peer as failed; the others are measured. ``mmbackbone`` and
    ``torch (floor)`` must run.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS='ignore')
    # Bytecode caching as on a normal install (pip writes .pyc files for
    # site-packages; an editable checkout gets them on the first import).
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    commands = dict(STARTUP_COMMANDS if commands is None else commands)
    show = getattr(args, 'progress', None)

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-c', code], env=env,
                              capture_output=True, text=True, cwd=ROOT)

    def timed(code: str) -> float:
        start = time.perf_counter()
        proc = run(code)
        elapsed = time.perf_counter() - start
        if proc.returncode:  # it ran in the warm-up: a flaky failure
            raise RuntimeError(f'{code!r} failed: {proc.stderr[-1000:]}')
        return elapsed

    skipped: Dict[str, str] = {}
    for name in progress(list(commands), 'start-up warm-up', show,
                         unit='cmd'):  # warm the file cache, untimed
        proc = run(commands[name])
        if not proc.returncode:
            continue
        kind, message = _last_error(proc.stderr)
        if name not in PEER_PACKAGES:
            raise RuntimeError(f'start-up command {name} '
                               f'({commands[name]!r}) failed: '
                               f'{proc.stderr[-1000:]}')
        if kind in ('ImportError', 'ModuleNotFoundError'):
            skipped[name] = not_installed(name, f'{kind}: {message}')
        else:
            skipped[name] = f'{name} failed: {kind}: {message}'[:500]
        del commands[name]
    names = list(commands)
    times: Dict[str, List[float]] = {k: [] for k in names}
    order = [names if rep % 2 == 0 else names[::-1]
             for rep in range(args.startup_runs)]
    for name in progress([n for batch in order for n in batch],
                         'start-up', show, unit='run'):
        times[name].append(timed(commands[name]))
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(peer: str) -> Optional[float]:
        return round(med['mmbackbone'] / med[peer], 3) if peer in med \
            else None

    result = dict(commands=commands, runs_s={k: [round(t, 3) for t in v]
                                             for k, v in times.items()},
                  median_s={k: round(v, 3) for k, v in med.items()},
                  skipped=skipped,
                  ratio_vs_mmpretrain=ratio('mmpretrain'),
                  ratio_vs_timm=ratio('timm'))
    print(f"{'start-up (import + build ResNet-50)':<40} median of "
          f'{args.startup_runs}')
    for name in names:
        print(f'  {name:<16} {med[name]:7.2f} s   runs '
              f'{[round(t, 2) for t in times[name]]}')
    for name, note in skipped.items():
        print(f'  {name:<16}       - s   {note}')
    print(f"  mmbackbone / mmpretrain = {result['ratio_vs_mmpretrain']}; "
          f"mmbackbone / timm = {result['ratio_vs_timm']}")
    return result


# ------------------------------------------------------------ output
def print_rows(rows: List[Row], header: bool = True) -> None:
    """The table: one line per row; ``of peak`` is the fraction of the
    peak FLOP/s of the row's dtype, ``max err`` the relative error of an
    optimised row, ``max diff`` the absolute one of a peer."""
    if header:
        print(f"{'case':<14} {'mode':<6} {'impl':<22} {'dtype':<5} "
              f"{'median ms':>10} {'ratio':>7} {'ratio of':<33} "
              f"{'GFLOP/s':>8} {'of peak':>8} {'max err':>8} "
              f"{'peak MiB':>9} {'max diff':>9}  weights / note")
    for r in rows:
        fmt = (lambda v, spec: format(v, spec) if v is not None else '-')
        note = r.weights or r.note
        others = [f'{v:.3f} {k}' for k, v in r.ratios.items()
                  if k != r.ratio_of]
        if others:
            note = '; '.join(([note] if note else []) + others)
        print(f'{r.case:<14} {r.mode:<6} {r.impl:<22} {r.dtype:<5} '
              f"{fmt(r.median_ms, '10.1f'):>10} {fmt(r.ratio, '7.3f'):>7} "
              f"{r.ratio_of:<33} {fmt(r.gflops, '8.1f'):>8} "
              f"{fmt(r.peak_fraction, '8.1%'):>8} "
              f"{fmt(r.max_err, '8.1e'):>8} {fmt(r.peak_mb, '9.0f'):>9} "
              f"{fmt(r.max_diff, '9.1e'):>9}  {note}")


def machine_peak(args) -> Any:
    """The :class:`~mmbackbone.utils.compute_ceiling.Peak` of the device
    the rows run on (``--threads`` cores of the CPU, or the CUDA GPU)."""
    from mmbackbone.utils import compute_ceiling as ceiling
    if torch.device(args.device).type == 'cuda':
        return ceiling.gpu_peak(torch.cuda.get_device_name(args.device))
    return ceiling.cpu_peak(ceiling.read_cpu_info(), args.threads,
                            args.fma_units)


def print_peak(peak: Any) -> None:
    figures = ', '.join(f'{k} {v:.1f}' if v is not None else f'{k} unknown'
                        for k, v in peak.gflops.items())
    print(f'peak GFLOP/s: {figures} ({peak.formula}; '
          f"{'; '.join(peak.assumed)})")


def parse_config(text: str, allow_python_bases: bool = False) -> dict:
    """A backbone config: a config file (its model.backbone or model) or
    a ``dict(...)`` / JSON literal.

    Files are read with :func:`mmbackbone.engine.load_config` (YAML/JSON
    are data; their ``.py`` bases only with ``allow_python_bases``), and
    every ``type`` in the result must be a registered name
    (:func:`mmbackbone.apis.check_config_types`).
    """
    from mmbackbone.apis import check_config_types
    if os.path.isfile(text):
        from mmbackbone.engine import load_config
        cfg = load_config(text,
                          allow_python_bases=allow_python_bases).to_dict()
        model = cfg.get('model', cfg)
        backbone = model.get('backbone', model) if isinstance(model,
                                                              dict) else None
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise KeyError(f'config {text} has no model.backbone or model '
                           f'dict with a "type"; top-level keys: '
                           f'{sorted(cfg)}')
        check_config_types(backbone, f'config {text}: backbone')
        return dict(backbone)
    try:
        node = ast.parse(text, mode='eval').body
        if isinstance(node, ast.Call) and getattr(node.func, 'id',
                                                  '') == 'dict':
            result = {kw.arg: ast.literal_eval(kw.value)
                      for kw in node.keywords}
        else:
            result = dict(ast.literal_eval(node))
    except (SyntaxError, ValueError, TypeError, RecursionError,
            MemoryError) as err:
        raise ValueError(f'--config {text[:200]!r} is neither a config file '
                         f"nor a dict literal such as \"dict(type='ResNet', "
                         f"depth=18)\" ({type(err).__name__}: {err})"
                         ) from None
    check_config_types(result, '--config')
    return result


def read_cpu_model() -> str:
    from mmbackbone.utils.compute_ceiling import read_cpu_info
    return read_cpu_info().model_name


def environment(args) -> dict:
    versions = {}
    for peer in ('timm', 'torchvision'):
        module, note = import_peer(peer)
        versions[peer] = module.__version__ if module is not None else note
    return dict(python=platform.python_version(), torch=torch.__version__,
                **versions,
                cpu=platform.processor() or platform.machine(),
                cpu_model=read_cpu_model(), device=args.device,
                device_name=(torch.cuda.get_device_name(args.device)
                             if args.device.startswith('cuda') else None),
                cores=os.cpu_count(), threads=args.threads,
                load_average=os.getloadavg())


def parse_args(argv=None):
    from mmbackbone.utils.cli_options import add_allow_python_bases
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', nargs='+', choices=sorted(PRESETS),
                        help='presets to run (default: all)')
    parser.add_argument('--config', help='a backbone config: a config file '
                        "or a dict literal such as \"dict(type='ResNet', "
                        'depth=18)"')
    add_allow_python_bases(parser, '--config file')
    parser.add_argument('--timm', help='timm model to compare --config with')
    parser.add_argument('--torchvision', help='torchvision model to '
                        'compare --config with')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'],
                        choices=['infer', 'train'])
    parser.add_argument('--no-optimized', dest='optimized',
                        action='store_false',
                        help='do not time optimize_for_inference(ours)')
    parser.add_argument('--dtypes', nargs='+', choices=DTYPES,
                        help='compute dtypes of the optimised rows '
                        '(default: fp32 bf16; fp32 bf16 fp16 on CUDA)')
    parser.add_argument('--compile', action='store_true',
                        help='also time each optimised model wrapped by '
                        'torch.compile (compiled before the timing)')
    parser.add_argument('--device', default='cpu',
                        help="where the timed models run: 'cpu' or 'cuda' "
                        "('cuda:N'); peak memory is measured on CPU only")
    parser.add_argument('--fma-units', type=int, default=2,
                        help='FMA units per core assumed by the CPU peak '
                        '(default 2, as on recent server cores)')
    parser.add_argument('--no-memory', dest='memory', action='store_false',
                        help='skip the per-case peak memory children')
    parser.add_argument('--with-cp', action='store_true',
                        help='peak training memory with/without with_cp '
                        '(ResNet-50, ViT-B/16)')
    parser.add_argument('--cp-batch', type=int, default=16)
    parser.add_argument('--startup', action='store_true',
                        help='cold start: import + build ResNet-50')
    parser.add_argument('--startup-runs', type=int, default=5)
    parser.add_argument('--json', help='write the results to this file '
                        "('-' for stdout)")
    parser.add_argument('--no-progress', dest='progress',
                        action='store_const', const=False, default=None,
                        help='no progress bars (they are shown only when '
                        'stderr is a terminal)')
    parser.add_argument('--memory-child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ('batch', 'size', 'threads', 'repeats', 'cp_batch',
                 'startup_runs', 'fma_units'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.warmup < 0:
        parser.error('--warmup must be >= 0')
    if (args.timm or args.torchvision) and not args.config:
        parser.error('--timm/--torchvision compare a --config')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        parser.error(f"--device {args.device!r} must be 'cpu', 'cuda' or "
                     f"'cuda:N'")
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available')
    if args.dtypes is None:
        args.dtypes = ['fp32', 'bf16'] + (['fp16'] if device.type == 'cuda'
                                          else [])
    args.dtypes = list(dict.fromkeys(args.dtypes))
    return args


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.memory_child:
        run_memory_child(json.loads(args.memory_child))
        return {}
    torch.set_num_threads(args.threads)
    results: Dict[str, Any] = dict(env=environment(args), args=vars(args))
    only_extras = (args.with_cp or args.startup) and not (args.preset
                                                          or args.config)
    if not only_extras:
        rows: List[Row] = []
        peak = machine_peak(args)
        results['peak'] = asdict(peak)
        print_peak(peak)
        if args.config:
            cfg = parse_config(args.config, args.allow_python_bases)
            rows += benchmark_case(cfg['type'], cfg, args.timm,
                                   args.torchvision, args, peak=peak)
        for name in (args.preset or ([] if args.config else PRESETS)):
            p = PRESETS[name]
            rows += benchmark_case(name, p.ours, p.timm, p.torchvision, args,
                                   p.sized, peak=peak)
        print(f'\nbatch {args.batch}, {args.size}x{args.size}, '
              f'{args.threads} threads, {args.device}, median of '
              f'{args.repeats} (after {args.warmup} warm-up), interleaved; '
              f'ratio = median of the per-repetition ratios')
        print_peak(peak)
        print_rows(rows)
        results['rows'] = [asdict(r) for r in rows]
    if args.with_cp:
        results['with_cp'] = benchmark_with_cp(args)
    if args.startup:
        results['startup'] = benchmark_startup(args)
    if args.json:
        text = json.dumps(results, indent=2, default=str)
        if args.json == '-':
            print(text)
        else:
            with open(args.json, 'w') as f:
                f.write(text + '\n')
    return results


if __name__ == '__main__':
    main()
