"""Sharded snapshots of DistributedKFAC written on N processes and resumed on
M (mpi_scripts/checkpoint_resume.py): every block's momentum and curvature
on its new owner, equal to what its old owner saved; the shared state on
every rank; the next steps continue the uninterrupted run."""
import pytest

from mpi_helpers import run_mpi


@pytest.mark.parametrize('saved, resumed', [(2, 3), (3, 1)])
def test_resume_on_another_process_count(tmp_path, saved, resumed):
    directory = str(tmp_path / 'snapshot')
    result = run_mpi(saved, 'checkpoint_resume.py', 'save', directory)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count('OK rank') == saved, result.stdout
    result = run_mpi(resumed, 'checkpoint_resume.py', 'load', directory)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count('(snapshot of {} processes)'.format(
        saved)) == resumed, result.stdout
