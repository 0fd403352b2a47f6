"""How close a model gets to the machine's compute ceiling.

* :func:`count_forward_flops`: FLOPs of one forward pass, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add;
  convolutions, matmuls and attention; elementwise work and norms are not
  counted).
* :func:`cpu_peak`: the peak FLOP/s of a CPU, ``threads x FMA units x
  SIMD lanes x 2 x clock``, read from ``/proc/cpuinfo`` flags and the
  clock; the FMA unit count is an assumption (2, overridable) and is
  reported as one.
* :func:`gpu_peak`: the datasheet peak of a few NVIDIA GPUs, from a
  table keyed by the device name.

Only ``torch`` is imported here.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import torch
from torch import nn

__all__ = ['count_forward_flops', 'CpuInfo', 'read_cpu_info', 'cpu_peak',
           'gpu_peak', 'GPU_PEAK_TFLOPS']

#: Dense (no sparsity) datasheet peaks in TFLOP/s: float32 on the CUDA
#: cores, bfloat16/float16 on the tensor cores (SXM boards where there are
#: several). A table, not a measurement; None where the GPU has no such
#: path. Matched in order against ``torch.cuda.get_device_name()``.
GPU_PEAK_TFLOPS: Dict[str, Dict[str, Optional[float]]] = {
    'H200': dict(fp32=67.0, bf16=989.4, fp16=989.4),
    'H100 PCIe': dict(fp32=51.2, bf16=756.0, fp16=756.0),
    'H100': dict(fp32=67.0, bf16=989.4, fp16=989.4),
    'A100': dict(fp32=19.5, bf16=312.0, fp16=312.0),
    'L40S': dict(fp32=91.6, bf16=362.1, fp16=362.1),
    'L4': dict(fp32=30.3, bf16=121.0, fp16=121.0),
    'A10': dict(fp32=31.2, bf16=125.0, fp16=125.0),
    'V100': dict(fp32=15.7, bf16=None, fp16=125.0),
    'T4': dict(fp32=8.1, bf16=None, fp16=65.0),
}


def count_forward_flops(model: nn.Module, *inputs: Any) -> int:
    """FLOPs of one forward pass of ``model`` on ``inputs`` (no grad).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(3, 8, 3, bias=False)   # 8x6x6 outputs, 27 MACs
        >>> count_forward_flops(conv, torch.rand(1, 3, 8, 8))
        15552
        >>> 2 * 27 * 8 * 6 * 6
        15552
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class CpuInfo:
    """What :func:`cpu_peak` needs to know about a CPU."""
    vendor: str = ''
    family: Optional[int] = None
    model_name: str = ''
    flags: FrozenSet[str] = frozenset()
    mhz: Optional[float] = None
    mhz_source: str = 'unknown'


def read_cpu_info(cpuinfo: Optional[str] = None,
                  cpufreq_dir: str = '/sys/devices/system/cpu/cpu0/cpufreq'
                  ) -> CpuInfo:
    """The first processor of ``/proc/cpuinfo`` (or the text ``cpuinfo``)
    and its clock: ``cpuinfo_max_freq`` of ``cpufreq_dir`` when present,
    else the ``cpu MHz`` line (the current clock; under a hypervisor
    usually the nominal one).

    Example:
        >>> info = read_cpu_info('vendor_id : GenuineIntel\\n'
        ...                      'cpu family : 6\\ncpu MHz : 2100.000\\n'
        ...                      'flags : fma avx2 avx512f\\n',
        ...                      cpufreq_dir='/nonexistent')
        >>> info.family, info.mhz, sorted(info.flags)
        (6, 2100.0, ['avx2', 'avx512f', 'fma'])
    """
    if cpuinfo is None:
        try:
            with open('/proc/cpuinfo') as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ''
    fields: Dict[str, str] = {}
    for line in cpuinfo.split('\n\n', 1)[0].splitlines():
        key, sep, value = line.partition(':')
        if sep:
            fields.setdefault(key.strip(), value.strip())
    family = fields.get('cpu family', '')
    mhz, source = None, 'unknown'
    max_freq = os.path.join(cpufreq_dir, 'cpuinfo_max_freq')
    try:
        with open(max_freq) as f:
            mhz, source = int(f.read().strip()) / 1000, max_freq
    except (OSError, ValueError):
        try:
            mhz = float(fields['cpu MHz'])
            source = '/proc/cpuinfo cpu MHz'
        except (KeyError, ValueError):
            pass
    return CpuInfo(vendor=fields.get('vendor_id', ''),
                   family=int(family) if family.isdigit() else None,
                   model_name=fields.get('model name', ''),
                   flags=frozenset(fields.get('flags', '').split()),
                   mhz=mhz, mhz_source=source)


@dataclass
class Peak:
    """Peak GFLOP/s per dtype and how each figure was made."""
    gflops: Dict[str, Optional[float]]
    formula: str
    assumed: List[str] = field(default_factory=list)


def _datapath_bits(info: CpuInfo) -> Tuple[int, str]:
    """The FMA datapath width and why."""
    if 'avx512f' in info.flags:
        if info.vendor == 'AuthenticAMD' and info.family == 25:
            return 256, ('AVX-512 on a 256-bit datapath (AMD family 25, '
                         'Zen 4, runs a 512-bit FMA as two halves)')
        return 512, 'AVX-512'
    if 'avx2' in info.flags and 'fma' in info.flags:
        return 256, 'AVX2 + FMA'
    if 'avx' in info.flags:
        return 256, 'AVX (no FMA: an add and a multiply per lane)'
    return 128, 'SSE'


def cpu_peak(info: CpuInfo, threads: int, fma_units: int = 2) -> Peak:
    """Peak GFLOP/s of ``threads`` cores of the CPU ``info``.

    float32: ``threads x fma_units x lanes x 2 x clock``, lanes = FMA
    datapath bits / 32. bfloat16: twice that with AVX512-BF16
    (``vdpbf16ps`` does two bf16 multiply-adds per 32-bit lane), 1024
    FLOPs per cycle per core with AMX-BF16, else the float32 figure
    (bf16 converted to float32). float16 likewise with AVX512-FP16 or
    AMX-FP16. The FMA unit count cannot be read from the CPU: it is the
    assumption ``fma_units`` (2 on recent server cores), listed in
    ``assumed`` with the clock's source.

    Example:
        >>> info = CpuInfo(vendor='AuthenticAMD', family=25, mhz=2600.0,
        ...                flags=frozenset({'avx2', 'fma', 'avx512f',
        ...                                 'avx512_bf16'}))
        >>> peak = cpu_peak(info, threads=2)
        >>> peak.gflops
        {'fp32': 166.4, 'bf16': 332.8, 'fp16': 166.4}
        >>> peak.formula
        '2 threads x 2 FMA units x 8 fp32 lanes x 2 x 2.60 GHz'
    """
    if threads < 1 or fma_units < 1:
        raise ValueError(f'threads={threads} and fma_units={fma_units} must '
                         f'be >= 1')
    bits, why = _datapath_bits(info)
    lanes = bits // 32
    units = fma_units if 'fma' in info.flags or bits == 512 else 1
    assumed = [f'{units} FMA unit{"s" if units > 1 else ""} per core '
               f'(assumed{"" if units == fma_units else ": no FMA"})',
               f'datapath {bits} bits: {why}',
               f'clock from {info.mhz_source}, taken as sustained']
    if info.mhz is None:
        return Peak(dict(fp32=None, bf16=None, fp16=None),
                    'unknown (no clock found)', assumed)
    ghz = info.mhz / 1000
    fp32 = threads * units * lanes * 2 * ghz
    amx = threads * 1024 * ghz

    def reduced(native: str, wide: str) -> float:
        if f'amx_{native}' in info.flags:
            assumed.append(f'{native}: AMX, 1024 FLOPs per cycle per core')
            return amx
        if wide in info.flags:
            assumed.append(f'{native}: {wide}, 2x the fp32 FLOPs per '
                           f'instruction')
            return 2 * fp32
        return fp32

    gflops = dict(fp32=round(fp32, 1),
                  bf16=round(reduced('bf16', 'avx512_bf16'), 1),
                  fp16=round(reduced('fp16', 'avx512_fp16'), 1))
    plural = 's' if threads > 1 else ''
    formula = (f'{threads} thread{plural} x {units} FMA units x {lanes} '
               f'fp32 lanes x 2 x {ghz:.2f} GHz')
    return Peak(gflops, formula, assumed)


def gpu_peak(name: str) -> Peak:
    """Datasheet peak of the GPU called ``name``
    (:data:`GPU_PEAK_TFLOPS`); every figure None when it is not in the
    table.

    Example:
        >>> gpu_peak('NVIDIA A100-SXM4-80GB').gflops['bf16']
        312000.0
        >>> gpu_peak('Some GPU').formula
        'unknown (Some GPU is not in the datasheet table)'
    """
    for key, tflops in GPU_PEAK_TFLOPS.items():
        if re.search(rf'\b{re.escape(key)}\b', name):
            gflops = {k: (v * 1000 if v is not None else None)
                      for k, v in tflops.items()}
            return Peak(gflops, f'datasheet table entry {key!r} (dense)',
                        ['a datasheet figure, not measured'])
    return Peak(dict(fp32=None, bf16=None, fp16=None),
                f'unknown ({name} is not in the datasheet table)')
