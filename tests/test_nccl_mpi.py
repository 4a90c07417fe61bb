"""'pure_nccl' through the MPI emulation of NCCL under mpiexec (2 and 3 CPU
processes) against 'mpi': the collectives and a 40-step stale DistributedKFAC
run, both mappings, fp32 and fp16, bit for bit
(tests/mpi_scripts/nccl_equivalence.py)."""
import re

import pytest

from mpi_helpers import run_mpi


@pytest.mark.parametrize('n', [2, 3])
def test_pure_nccl_equals_mpi_bit_for_bit(n):
    result = run_mpi(n, 'nccl_equivalence.py', timeout=180)
    assert result.returncode == 0, result.stdout
    ranks = set(re.findall(r'OK rank (\d+) of', result.stdout))
    assert ranks == set(str(r) for r in range(n)), result.stdout
    assert result.stdout.count('training 40 steps bit-identical') == n


COMM_VOLUME = '../../benchmarks/comm_volume.py'


def test_padded_byte_counters_equal_the_nccl_plan():
    """benchmarks/comm_volume.py --verify: a ResNet-20 step's counters
    equal planned_nccl_traffic (3 ranks; the grouped mapping's equal 'mpi''s,
    checked in nccl_equivalence.py)."""
    result = run_mpi(3, COMM_VOLUME, '--verify', 'float16',
                     '--communicator', 'pure_nccl_emulated', '--mapping',
                     'padded', timeout=120)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(' match') == 3, result.stdout


def test_collective_timing_runs_on_cpu():
    result = run_mpi(2, COMM_VOLUME, '--time', 'pure_nccl_emulated',
                     '--model', 'resnet20', '--repeat', 1, timeout=120)
    assert result.returncode == 0, result.stdout
    assert 'pure_nccl_emulated (auto mapping) on 2 rank(s), CPU' in (
        result.stdout)
    assert result.stdout.count('stage 4 AllGatherV') == 2, result.stdout


def test_verify_collects_the_ranks_results_through_mpi():
    """Rank 0 gathers every rank's counters and alone prints them and one
    summary: the benchmark once parsed the ranks' interleaved output and
    said 'NO' while every rank had printed 'match'."""
    result = run_mpi(3, COMM_VOLUME, '--verify', 'float32', timeout=120)
    assert result.returncode == 0, result.stdout
    lines = [line for line in result.stdout.splitlines()
             if line.startswith('verify')]
    assert [line.split()[4] for line in lines[:3]] == ['rank=0', 'rank=1',
                                                       'rank=2']
    assert all(line.endswith(' match') for line in lines[:3]), lines
    assert lines[3:] == ['verify-summary ranks=3 all-match=yes'], lines
