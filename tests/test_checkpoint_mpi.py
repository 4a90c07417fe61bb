"""Sharded snapshots of DistributedKFAC written on N processes and resumed on
M (mpi_scripts/checkpoint_resume.py): every block's momentum and curvature
on its new owner, equal to what its old owner saved; the shared state on
every rank; the next steps continue the uninterrupted run. And what used to
lose state silently (mpi_scripts/snapshot_safety.py): one rank's file loaded
on every rank, and the iterator state of a sharded snapshot taken with the
defaults. Each rank of both scripts writes its record to a JSON file; the
tests assert on every rank's."""
import pytest

from mpi_helpers import read_rank_records
from mpi_helpers import run_mpi
from mpi_helpers import run_mpi_records


@pytest.mark.parametrize('saved, resumed', [(2, 3), (3, 1)])
def test_resume_on_another_process_count(tmp_path, saved, resumed):
    directory = str(tmp_path / 'snapshot')
    records = run_mpi_records(saved, 'checkpoint_resume.py',
                              tmp_path / 'save', 'save', directory)
    blocks = records[0]['blocks']
    for record in records:
        # snapshot at step 5, then the 3 more steps the load is compared to
        assert record['steps'] == 8 and record['blocks'] == blocks, record
    assert sorted(n for r in records for n in r['owned']) == sorted(blocks)
    records = run_mpi_records(resumed, 'checkpoint_resume.py',
                              tmp_path / 'load', 'load', directory)
    for record in records:
        assert record['snapshot_size'] == saved, record
        assert record['iteration'] == 5 and record['steps'] == 8, record
        assert record['blocks'] == blocks and record['shared_keys'] > 0
        # assert_allclose(rtol=1e-5, atol=1e-5 * scale): <= 2e-5 of scale
        assert record['max_error'] <= 2e-5, record
    # every block checked once, on its new owner
    assert sorted(n for r in records for n in r['checked']) == \
        sorted(blocks)


@pytest.mark.parametrize('options', [
    '{"inverse": "eigen"}', '{"kl_clip": 1e-4}', '{"fisher": "mc"}',
    '{"damping_adaptation": true, "damping_adaptation_interval": 1}'],
    ids=['eigen', 'kl_clip', 'mc', 'lm'])
def test_curvature_options_resume_on_another_process_count(tmp_path,
                                                            options):
    """Each of issue 18's options saved on 2 processes and resumed on 3:
    the blocks' state (eigenvalues and eigenvectors with 'eigen') on the new
    owners, the adapted damping everywhere, and the next steps continue the
    uninterrupted run ('mc': its samples come from the same seeded
    generator on every rank, so the continuation matches too)."""
    directory = str(tmp_path / 'snapshot')
    run_mpi_records(2, 'checkpoint_resume.py', tmp_path / 'save', 'save',
                    directory, options)
    records = run_mpi_records(3, 'checkpoint_resume.py', tmp_path / 'load',
                              'load', directory, options)
    for record in records:
        assert record['snapshot_size'] == 2 and record['steps'] == 8
        assert record['max_error'] <= 2e-5, record
    assert sorted(n for r in records for n in r['checked']) == \
        sorted(records[0]['blocks'])


def rank_records(directory, n):
    """What each rank of mpi_scripts/snapshot_safety.py wrote."""
    return read_rank_records(directory, n)


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
