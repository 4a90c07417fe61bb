"""Sharded snapshots of DistributedKFAC written on N processes and resumed on
M (mpi_scripts/checkpoint_resume.py): every block's momentum and curvature
on its new owner, equal to what its old owner saved; the shared state on
every rank; the next steps continue the uninterrupted run. And what used to
lose state silently (mpi_scripts/snapshot_safety.py, each rank's record in a
JSON file): one rank's file loaded on every rank, and the iterator state of
a sharded snapshot taken with the defaults."""
import json
import os

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


def rank_records(directory, n):
    """What each rank of mpi_scripts/snapshot_safety.py wrote."""
    records = []
    for rank in range(n):
        with open(os.path.join(directory, 'rank{}.json'.format(rank))) as f:
            records.append(json.load(f))
    assert [r['rank'] for r in records] == list(range(n))
    return records


def test_one_rank_file_loaded_on_every_rank_is_refused(tmp_path):
    """ChainerMN's rank-0 trainer snapshot (the original's --resume) loaded
    on both ranks: each rank refuses it, with the same one line saying how
    to resume (it used to load and reset the blocks rank 1 owns)."""
    result = run_mpi(2, 'snapshot_safety.py', 'one_file', tmp_path)
    assert result.returncode == 0, result.stdout
    records = rank_records(str(tmp_path), 2)
    messages = set()
    for record in records:
        for case in ('load_npz', 'load_npz_mid_run'):
            error = record[case]
            assert error is not None, (case, record)
            assert error['type'] == 'ForeignSnapshotError', error
            assert '\n' not in error['message']
            assert 'ShardedSnapshot' in error['message'], error
            messages.add(error['message'])
        error = record['checkpoint_load']
        assert error['type'] == 'CheckpointError', error
        assert 'is one file, not a sharded snapshot directory' in \
            error['message'] and '\n' not in error['message'], error
    assert len(messages) == 1, messages   # rank 1's, on both
    assert 'rank 1 loaded a snapshot' in messages.pop()


def test_sharded_snapshot_keeps_each_ranks_iterator_by_default(tmp_path):
    """ShardedSnapshot and load with their default arguments: each rank
    resumes its own iterator position and order (rank 0's used to be
    loaded on every rank)."""
    result = run_mpi(2, 'snapshot_safety.py', 'iterators', tmp_path)
    assert result.returncode == 0, result.stdout
    records = rank_records(str(tmp_path), 2)
    assert records[0]['saved']['order'] != records[1]['saved']['order']
    for record in records:
        assert record['iteration'] == 3
        assert record['loaded'] == record['saved'], record
