"""The device pipeline's loader: seeded batch order, resumable mid-epoch, global batches split over processes."""


import torch
from attnzoo.config.recipe import DataConfig
from attnzoo.data.loader import Batching, DeviceLoader


def loader(n=100, batch=10, rank=0, world=1, seed=0):
    from attnzoo.data.datasets import ImageSet

    images = torch.randint(0, 255, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    data = ImageSet(images, torch.arange(n), ["x"])
    return DeviceLoader(data, DataConfig(), torch.zeros(3), torch.ones(3), device="cpu",
                        batching=Batching(batch, world, rank), seed=seed)


def test_training_order_is_seeded_and_resumable():
    a = [l.tolist() for _, _, l in loader().train_batches(epoch=2)]
    b = [l.tolist() for _, _, l in loader().train_batches(epoch=2, start_step=4)]
    assert a[4:] == b and sorted(sum(a, [])) == list(range(100))
    assert a != [l.tolist() for _, _, l in loader().train_batches(epoch=3)]


def test_ranks_split_each_global_batch_and_eval_covers_every_sample_once():
    ranks = [loader(rank=r, world=2) for r in range(2)]
    for (_, x0, l0), (_, x1, l1), (_, full_x, full) in zip(ranks[0].train_batches(0), ranks[1].train_batches(0),
                                                           loader().train_batches(0)):
        assert torch.cat([l0, l1]).tolist() == full.tolist()
        torch.testing.assert_close(torch.cat([x0, x1]), full_x)  # same augmentation as one process
    n = 7
    seen = []
    for r in range(3):
        for _, labels, index in loader(n=n, batch=3, rank=r, world=3).eval_batches():
            seen += index[index >= 0].tolist()
    assert sorted(seen) == list(range(n))


