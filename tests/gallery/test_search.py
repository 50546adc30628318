"""Search: exact answers equal brute force; IVF/HNSW recall on face-like clusters; index round trip."""

from __future__ import annotations

import numpy as np
import pytest

from facepipe.gallery.search import SearchIndex, recall_at_1, top_k_exact


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n_ids, per_id, dim, noise, rng):
    centres = _unit(rng.standard_normal((n_ids, dim)))
    return _unit(np.repeat(centres, per_id, 0) + noise * rng.standard_normal((n_ids * per_id, dim))), centres


def _brute(q, g, k):
    s = q @ g.T.astype(np.float32)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("batch", [1, 7, 300])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_exact_search_matches_brute_force(batch, k):
    rng = np.random.default_rng(batch * 100 + k)
    gallery = _unit(rng.standard_normal((3000, 32)))
    queries = _unit(rng.standard_normal((batch, 32)))
    scores, ids = top_k_exact(queries, gallery, k, block_rows=700)  # several blocks
    ref_s, ref_i = _brute(queries, gallery, k)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    # Ids agree up to the order of near-ties: each returned id really has the returned score.
    np.testing.assert_allclose(np.einsum("qd,qkd->qk", queries, gallery[ids]), scores, atol=1e-5)
    assert (ids == ref_i).mean() > 0.99 and len(np.unique(ids[0])) == k


def test_k_larger_than_gallery_and_float16_storage():
    rng = np.random.default_rng(0)
    gallery = _unit(rng.standard_normal((4, 16))).astype(np.float16)
    scores, ids = top_k_exact(gallery[:2].astype(np.float32), gallery, 10)
    assert ids.shape == (2, 4) and ids[0, 0] == 0 and ids[1, 0] == 1
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("kind,params", [("ivf", {"nprobe": 32}), ("hnsw", {"ef_search": 64})])
def test_approximate_index_recall_on_face_like_clusters(kind, params):
    rng = np.random.default_rng(1)
    gallery, centres = _clustered(2000, 2, 64, 0.08, rng)
    queries = _unit(np.repeat(centres[:300], 1, 0) + 0.1 * rng.standard_normal((300, 64)))
    index = SearchIndex.build(gallery, kind, **params)
    _, approx = index.search(queries, 5)
    _, exact = top_k_exact(queries, gallery, 5)
    assert recall_at_1(approx, exact) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_round_trip_and_rebuild(kind, tmp_path):
    rng = np.random.default_rng(2)
    gallery, _ = _clustered(300, 2, 32, 0.1, rng)
    index = SearchIndex.build(gallery, kind)
    index.save(tmp_path / "index.faiss")
    loaded = SearchIndex.load(tmp_path / "index.faiss", gallery, kind)
    np.testing.assert_array_equal(loaded.search(gallery[:20], 3)[1], index.search(gallery[:20], 3)[1])
    smaller = loaded.rebuilt(gallery[:100])
    assert smaller.size == 100 and smaller.kind == kind
    assert smaller.search(gallery[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]


def test_index_that_does_not_match_the_gallery_is_refused(tmp_path):
    from facepipe.errors import DataError

    gallery = _unit(np.random.default_rng(3).standard_normal((50, 8)))
    SearchIndex.build(gallery, "flat").save(tmp_path / "index.faiss")
    with pytest.raises(DataError, match="50 x 8"):
        SearchIndex.load(tmp_path / "index.faiss", gallery[:40], "flat")
    (tmp_path / "bad.faiss").write_bytes(b"garbage")
    with pytest.raises(DataError, match="FAISS"):
        SearchIndex.load(tmp_path / "bad.faiss", gallery, "flat")
