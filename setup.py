"""Install mmbackbone.

mmcv: mmcv-lite is required unless a full ``mmcv`` in the same version
range is already installed; then that one satisfies the requirement
instead of being overwritten by mmcv-lite (both install the ``mmcv``
package).
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
MMCV_RANGE = '>=2.0,<2.2'


def read_requirements(name):
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [line.split('#')[0].strip() for line in lines
            if line.split('#')[0].strip()]


def installed_full_mmcv():
    """True when a full mmcv in MMCV_RANGE is installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        from packaging.specifiers import SpecifierSet
        try:
            return version('mmcv') in SpecifierSet(MMCV_RANGE)
        except PackageNotFoundError:
            return False
    except ImportError:
        return False


def runtime_requirements():
    reqs = read_requirements('runtime.txt')
    if installed_full_mmcv():
        reqs = [('mmcv' + MMCV_RANGE) if r.startswith('mmcv-lite') else r
                for r in reqs]
    return reqs


exec((HERE / 'mmbackbone' / 'version.py').read_text())

setup(
    name='mmbackbone',
    version=__version__,  # noqa: F821
    description='Vision backbones behind one OpenMMLab-style contract',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmbackbone', 'mmbackbone.*']),
    package_data={'mmbackbone': ['zoo/*.json', 'zoo/*.yaml']},
    python_requires='>=3.9',
    install_requires=runtime_requirements(),
    extras_require={
        'tests': read_requirements('tests.txt'),
        'optional': read_requirements('optional.txt'),
    },
    entry_points={'console_scripts': ['mmbackbone=mmbackbone.cli:main']},
    license='Apache-2.0',
)
