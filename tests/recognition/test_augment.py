"""Training augmentation: each mode keeps the face's shape and type, draws its randomness from
(seed, epoch, position) only, and `strong` changes the face more than `flip_jitter` does."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def records(face_rec):
    from facepipe.data.insightface import FaceRecordSet

    return FaceRecordSet(face_rec)


@pytest.mark.parametrize("mode", ["none", "flip", "flip_jitter", "strong"])
def test_every_mode_gives_a_uint8_face_of_the_input_size_and_repeats_for_the_same_position(records, mode):
    from facepipe.recognition.data import FaceDataset

    dataset = FaceDataset(records, 56, mode, seed=3)
    face, label = dataset[(5, 2, 17)]
    assert face.shape == (56, 56, 3) and str(face.dtype) == "torch.uint8"
    assert label == records.decode(5)[1]
    again, _ = FaceDataset(records, 56, mode, seed=3)[(5, 2, 17)]
    assert np.array_equal(face.numpy(), again.numpy())
    if mode == "none":
        return
    others = [FaceDataset(records, 56, mode, seed=3)[(5, epoch, 17)][0].numpy() for epoch in range(3, 9)]
    assert any(not np.array_equal(face.numpy(), other) for other in others), "the epoch changes nothing"


def test_strong_moves_faces_further_from_the_original_than_flip_jitter(records):
    from facepipe.recognition.data import FaceDataset

    def mean_change(mode):
        dataset = FaceDataset(records, 56, mode, seed=0)
        changes = []
        for position in range(40):
            plain = FaceDataset(records, 56, "none")[(position % len(records), 0, position)][0].numpy()
            # compare with the flip undone where it was drawn: the warp, colour and erasing remain
            face = dataset[(position % len(records), 0, position)][0].numpy().astype(np.float32)
            change = min(np.abs(face - plain).mean(), np.abs(face[:, ::-1] - plain).mean())
            changes.append(change)
        return float(np.mean(changes))

    assert mean_change("strong") > 1.3 * mean_change("flip_jitter")
