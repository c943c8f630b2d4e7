"""The samplers: a resumable order, its split between ranks, and the evaluation shards."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from conftest import make_loader
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    TensorDataset,
    WeightedRandomSampler,
)

from trainer.sampling import (
    EvaluationShard,
    ResumableSampler,
    make_resumable,
    set_sampler_epoch,
    shard_for_evaluation,
    why_not_resumable,
)


def _indices(count: int, **options: object) -> DataLoader:
    """A loader whose batches are the indices of its samples."""
    return DataLoader(TensorDataset(torch.arange(count)), batch_size=4, **options)


def _batches(loader: DataLoader) -> list[list[int]]:
    return [batch.tolist() for (batch,) in loader]


def test_a_resumable_loader_draws_the_plain_loaders_order_from_the_global_seed() -> None:
    torch.manual_seed(3)
    plain = [_batches(_indices(18, shuffle=True)) for _ in range(2)]
    torch.manual_seed(3)
    resumable, _ = make_resumable(_indices(18, shuffle=True))
    assert [_batches(resumable) for _ in range(2)] == plain
    assert plain[0] != plain[1]


def test_a_resumable_loader_draws_the_plain_loaders_order_from_its_own_generator() -> None:
    plain_loader = _indices(18, shuffle=True, generator=torch.Generator().manual_seed(9))
    plain = [_batches(plain_loader) for _ in range(3)]
    resumable, sampler = make_resumable(
        _indices(18, shuffle=True, generator=torch.Generator().manual_seed(9))
    )
    assert sampler.generator is resumable.generator
    assert [_batches(resumable) for _ in range(3)] == plain


def test_making_a_loader_resumable_twice_keeps_the_first_sampler() -> None:
    loader, sampler = make_resumable(_indices(8, shuffle=True))
    assert make_resumable(loader) == (loader, sampler)


def test_only_an_order_the_sampler_can_repeat_is_taken_over() -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[int]:
            yield from range(4)

    weights = WeightedRandomSampler([1.0] * 8, num_samples=8)
    assert why_not_resumable(_indices(8)) is None
    assert why_not_resumable(_indices(8, shuffle=True)) is None
    assert "IterableDataset" in str(why_not_resumable(DataLoader(Stream())))
    assert "WeightedRandomSampler" in str(why_not_resumable(_indices(8, sampler=weights)))
    assert "list" in str(why_not_resumable([1, 2]))


def test_two_ranks_batches_are_disjoint_and_cover_the_data() -> None:
    shares = [
        make_resumable(_indices(24, shuffle=True), 2, rank, share_seed=lambda seed: 11)[0]
        for rank in range(2)
    ]
    seen = [index for share in shares for batch in _batches(share) for index in batch]
    assert sorted(seen) == list(range(24))
    assert [len(share) for share in shares] == [3, 3]


def test_ranks_shard_one_permutation_into_disjoint_equal_shares() -> None:
    shares = [
        list(ResumableSampler(10, shuffle=True, num_replicas=3, rank=rank,
                              share_seed=lambda seed: 1234))
        for rank in range(3)
    ]  # fmt: skip
    assert [len(share) for share in shares] == [4, 4, 4]
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(1234)).tolist()
    padded = permutation + permutation[:2]
    assert shares == [padded[rank::3] for rank in range(3)]


def test_a_sharded_epoch_resumes_at_the_next_unconsumed_index() -> None:
    sampler = ResumableSampler(16, shuffle=True, num_replicas=2, rank=1,
                               share_seed=lambda seed: 7)  # fmt: skip
    whole = list(sampler)
    sampler.resume_at(sampler.epoch_order, 5)
    assert list(sampler) == whole[5:]


def test_a_resume_point_is_used_by_one_pass_only() -> None:
    sampler = ResumableSampler(12, shuffle=False)
    sampler.resume_at({}, 7)
    assert list(sampler) == list(range(7, 12))
    assert list(sampler) == list(range(12))


def test_evaluation_shards_cover_every_sample_exactly_once() -> None:
    loader = make_loader(n=37, batch_size=5)
    shards = [shard_for_evaluation(loader, 2, rank) for rank in range(2)]
    assert all(isinstance(shard.sampler, EvaluationShard) for shard in shards)
    seen = sorted(i for shard in shards for i in shard.sampler)
    assert seen == list(range(37))
    assert [len(shard.sampler) for shard in shards] == [19, 18]


def test_a_loader_with_its_own_sampler_is_evaluated_whole_on_every_rank() -> None:
    loader = _indices(8, sampler=WeightedRandomSampler([1.0] * 8, num_samples=8))
    assert shard_for_evaluation(loader, 2, 1) is loader


def test_a_distributed_sampler_is_told_each_epoch_so_it_reshuffles() -> None:
    sampler = DistributedSampler(TensorDataset(torch.arange(8)), num_replicas=2, rank=0)
    loader = _indices(8, sampler=sampler)
    first = _batches(loader)
    set_sampler_epoch(loader, 1)
    assert sampler.epoch == 1
    assert _batches(loader) != first
