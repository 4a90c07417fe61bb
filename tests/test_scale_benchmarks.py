"""The fp16-reduction and scale-simulation benchmarks run end to end with tiny
settings and print what they promise (issue 10, item 6 and "Beyond this
machine")."""
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')


def run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH, script)] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        universal_newlines=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    return out.stdout


@pytest.fixture(scope='module')
def fp16_output():
    return run('fp16_reduction.py', '--ranks', '2,3,4,8,16', '--values', '256',
               '--sizes', '20000', '--reps', '1')


def _error_rows(text):
    """{(input, P): {order: (D, max, rms, bound)}} from the error table."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r'\s*(gradient|factor)\s+(\d+)\s+\|(.*)', line)
        if not m:
            continue
        cells = [c.split() for c in m.group(3).split('|')]
        orders = {}
        for name, cell in zip(('ring', 'halving', 'binomial'), cells):
            orders[name] = (int(cell[0]),) + tuple(float(v) for v in cell[1:])
        orders['fp32'] = float(cells[3][0])
        rows[(m.group(1), int(m.group(2)))] = orders
    return rows


def test_fp16_errors_within_their_derived_bounds(fp16_output):
    rows = _error_rows(fp16_output)
    assert set(rows) == set((k, p) for k in ('gradient', 'factor')
                            for p in (2, 3, 4, 8, 16))
    for (kind, p), orders in rows.items():
        assert orders['ring'][0] == p - 1
        assert orders['binomial'][0] == math.ceil(math.log2(p))
        for order in ('ring', 'halving', 'binomial'):
            depth, mx, rms, bound = orders[order]
            assert 0 < rms <= mx <= bound, (kind, p, order)
            # the bound is gamma(D + 1) ~ (D + 1) 2**-11 of the largest mean
            # |x|, so at most a few times that for these inputs
            assert bound < 4 * (depth + 1) * 2.0 ** -11 / (1 - (depth + 1) *
                                                           2.0 ** -11)
        # the trees are never worse than the ring's bound; fp32 is ~2**13
        # times more accurate than fp16
        assert orders['halving'][3] <= orders['ring'][3]
        assert orders['fp32'] < orders['halving'][1] / 100
    assert 'all measured errors are within their bounds' in fp16_output


def test_fp16_speed_is_measured_and_judged(fp16_output):
    for collective in ('allreduce', 'reduce_scatter'):
        m = re.search(r'^\s*{}\s+20000\s+([\d.]+)\s+([\d.]+)'.format(
            collective), fp16_output, re.M)
        assert m, fp16_output
        assert float(m.group(1)) > 0 and float(m.group(2)) > 0
    assert re.search(r'^VERDICT: ', fp16_output, re.M)
    assert 'the fp16 op' in fp16_output


@pytest.fixture(scope='module')
def scale_output():
    return run('scale_simulation.py', '--ranks', '8,16', '--reps', '1')


def _scale_rows(text):
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines)
                if line.split()[:2] == ['P', 'setup'])
    names = re.split(r'\s{1,}', lines[head].strip())
    # two-word column names
    joined = []
    skip = False
    for i, name in enumerate(names):
        if skip:
            skip = False
            continue
        if i + 1 < len(names) and names[i + 1] in ('MB', 'KB', 'B', 'send',
                                                   'recv'):
            joined.append(name + ' ' + names[i + 1])
            skip = True
        else:
            joined.append(name)
    rows = {}
    for line in lines[head + 1:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        assert len(cells) == len(joined), (joined, cells)
        rows[int(cells[0])] = dict(zip(joined, (float(c) for c in cells)))
    return rows


def test_scale_simulation_reports_setup_and_step_per_rank(scale_output):
    rows = _scale_rows(scale_output)
    assert sorted(rows) == [8, 16]
    row = rows[16]
    assert row['setup MB'] > 0          # per-rank setup memory at P = 16
    assert row['setup'] > 0 and row['step'] > 0
    assert row['step MB'] > 0
    # the model-agreement check receives a fixed number of bytes
    assert rows[8]['agree B'] == rows[16]['agree B']
    # ResNet-50, fp32: every rank's stage-2 send buffer holds every
    # gradient and every statistic (symmetric ones as triangles), plus the
    # one-value flag of each rank's segment (if the optimizer sends one)
    import chainerkfac  # NOQA: F401
    from chainerkfac.optimizers.traffic import planned_step_traffic
    from models import resnet
    planned = sum(planned_step_traffic(resnet.ResNet50(), 16)[
        'stage2_counts']) * 4 / 2.0 ** 20
    assert abs(row['rs send'] - planned) < 0.1 + 16 * 4 / 2.0 ** 20
    assert 'super-linear per rank:' in scale_output
    assert re.search(r'Model agreement: \d+ B received per rank at P = 16',
                     scale_output)
    assert re.search(r'First update: \d+ broadcasts', scale_output)
