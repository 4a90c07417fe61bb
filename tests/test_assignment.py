import pytest

from chainerkfac import assignment
from chainerkfac import fisher_blocks
from models import resnet


@pytest.fixture(scope='module')
def resnet50_costs():
    blocks, _ = fisher_blocks.create_fisher_blocks(resnet.ResNet50(), 'full')
    assert len(blocks) == 107
    return [assignment.block_cost(b) for b in blocks]


def test_block_cost_of_a_linear_block():
    import chainer.links as L
    block = fisher_blocks.LinearBlock('/fc', L.Linear(4, 3))
    # A: 5x5 (bias), G: 3x3; preconditioning 2*5*3*(5+3)
    assert assignment.block_cost(block) == 125 + 27 + 240


def test_count_is_the_original_contiguous_split():
    assert assignment.assign_blocks([1] * 7, 3, 'count') == \
        [0, 0, 0, 1, 1, 2, 2]


def test_more_ranks_than_blocks():
    owners = assignment.assign_blocks([5.0, 1.0], 3)
    assert owners == [0, 1]


def test_unknown_strategy():
    with pytest.raises(ValueError, match='assignment'):
        assignment.assign_blocks([1.0], 2, 'random')


def test_balanced_is_deterministic(resnet50_costs):
    a = assignment.assign_blocks(resnet50_costs, 8)
    b = assignment.assign_blocks(list(resnet50_costs), 8)
    assert a == b


@pytest.mark.parametrize('size', [4, 8, 16])
def test_balanced_on_resnet50(resnet50_costs, size):
    """max/mean cost per rank. With whole blocks nothing beats
    max(1, largest block / mean load): at 16 ranks res5's 3x3 convs
    (A of 4608^2, ~1e11 flops each) exceed the mean, so 1.15 is out of reach
    there; balanced must then reach that bound."""
    costs = resnet50_costs
    owners = assignment.assign_blocks(costs, size)
    balanced = assignment.load_imbalance(costs, owners, size)
    count = assignment.load_imbalance(
        costs, assignment.assign_blocks(costs, size, 'count'), size)
    bound = max(1.0, max(costs) / (sum(costs) / size))
    assert balanced <= max(1.15, bound * 1.01)
    assert balanced < count / 2
