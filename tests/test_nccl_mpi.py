"""'pure_nccl' through the MPI emulation of NCCL under mpiexec (2 and 3 CPU
processes) against 'mpi': the collectives and a 40-step stale DistributedKFAC
run, both mappings, fp32 and fp16, bit for bit
(tests/mpi_scripts/nccl_equivalence.py, each rank's record in a JSON
file)."""
import pytest

from mpi_helpers import run_mpi
from mpi_helpers import run_mpi_records

# nccl_equivalence.py's training runs: (mapping, comm_dtype, overlap)
CONFIGS = [['grouped', 'float32', True], ['padded', 'float32', False],
           ['grouped', 'float16', False], ['padded', 'float16', True]]


@pytest.mark.parametrize('n', [2, 3])
def test_pure_nccl_equals_mpi_bit_for_bit(tmp_path, n):
    records = run_mpi_records(n, 'nccl_equivalence.py', tmp_path,
                              timeout=180)
    for record in records:
        assert record['phases'] == ['collectives', 'training'], record
        started = record['collectives']['started']
        assert started['grouped'].get('Ireduce_scatter (fused reduces)')
        assert 'Ireduce' not in started['grouped'], started
        assert started['padded'].get('Ireduce_scatter'), started
        assert started['padded'].get('Iallgather'), started
        assert started['grouped'].get('Ibcast'), started
        configs = record['training']['configs']
        assert [[c['mapping'], c['comm_dtype'], c['overlap']]
                for c in configs] == CONFIGS, configs
        for c in configs:   # 40 steps, bit-identical at every 10th
            assert c['steps'] == 40, c
            assert c['bit_identical_at'] == [10, 20, 30, 40], c
            assert c['max_interval'] > 1, c   # the run went stale
            if c['mapping'] == 'grouped':
                assert c['nccl_bytes'] == c['mpi_bytes'], c
            else:
                assert c['nccl_bytes'][0] >= c['mpi_bytes'][0], c


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
