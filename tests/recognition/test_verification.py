"""Verification protocol and pair files: LFW pairs.txt and InsightFace .bin reading (and their errors),
10-fold accuracy, ROC AUC and TAR@FAR against brute-force definitions."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from facepipe.errors import DataError
from facepipe.evaluation.pairs import load_verification_set, read_insightface_bin, read_lfw_pairs
from facepipe.evaluation.verification import roc_curve, auc, tar_at_far, ten_fold_accuracy, verification_metrics


def _pairs_file(tmp_path, text: str):
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    return p


def test_lfw_pairs_are_read_with_folds_and_same_flags(tmp_path):
    p = _pairs_file(tmp_path, "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t3\nBob\t2\t3\nCy\t1\tAnn\t2\n")
    pairs = read_lfw_pairs(p)
    assert [(x.name1, x.image1, x.name2, x.image2, x.same, x.fold) for x in pairs] == [
        ("Ann", 1, "Ann", 2, True, 0), ("Ann", 1, "Bob", 3, False, 0),
        ("Bob", 2, "Bob", 3, True, 1), ("Cy", 1, "Ann", 2, False, 1)]


@pytest.mark.parametrize("text,line,message", [
    ("", 1, "empty pairs file"),
    ("ten\t300\n", 1, "as integers"),
    ("1\t2\nAnn\t1\t2\n", 1, "promises 1 folds x 4 pairs = 4 lines, found 1"),
    ("1\t1\nAnn\t1\tBob\t2\nAnn\t1\t2\n", 2, "same person"),
    ("1\t1\nAnn\tone\t2\nAnn\t1\tBob\t2\n", 2, "must be integers"),
    ("1\t1\nAnn\t0\t2\nAnn\t1\tBob\t2\n", 2, "start at 1"),
])
def test_bad_pairs_files_name_the_line(tmp_path, text, line, message):
    with pytest.raises(DataError, match=message) as err:
        read_lfw_pairs(_pairs_file(tmp_path, text))
    assert err.value.line == line


def test_missing_image_names_the_pairs_line(tmp_path):
    img = np.full((60, 60, 3), 128, np.uint8)
    (tmp_path / "images" / "Ann").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "Ann" / "Ann_0001.jpg"), img)
    cv2.imwrite(str(tmp_path / "images" / "Ann" / "Ann_0002.jpg"), img)
    p = _pairs_file(tmp_path, "1\t1\nAnn\t1\t2\nAnn\t1\tBob\t2\n")
    with pytest.raises(DataError, match="Bob_0002.jpg of this pair does not exist") as err:
        load_verification_set(p, None, lambda im: im[:8, :8])
    assert err.value.line == 3


def _jpeg(seed):
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))[1].tobytes()


@pytest.mark.parametrize("protocol", [2, 4])
def test_insightface_bin_is_read_without_mxnet(tmp_path, protocol):
    bins = [_jpeg(i) for i in range(40)]
    issame = [i % 2 == 0 for i in range(20)]
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    images, same = read_insightface_bin(path)
    assert images == bins and same.tolist() == issame
    target = load_verification_set(path, None, lambda im: cv2.resize(im, (16, 16)))
    assert target.faces.shape == (40, 16, 16, 3)
    assert target.left.tolist() == list(range(0, 40, 2)) and target.right.tolist() == list(range(1, 40, 2))
    assert target.folds.tolist() == [k // 2 for k in range(20)]  # 10 contiguous folds


def test_bin_files_that_could_run_code_or_do_not_pair_up_are_refused(tmp_path):
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps((__import__("os").system, [True])))
    with pytest.raises(DataError, match="refusing to load"):
        read_insightface_bin(evil)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(pickle.dumps(([_jpeg(0)] * 3, [True, False])))
    with pytest.raises(DataError, match="3 images for 2 pairs"):
        read_insightface_bin(odd)


def test_roc_auc_and_tar_match_brute_force():
    rng = np.random.default_rng(0)
    same = rng.random(300) < 0.5
    scores = np.round(rng.normal(same * 1.0, 1.0), 1)  # ties on purpose
    far, tar, thresholds = roc_curve(scores, same)
    for t, f, r in zip(thresholds[1:], far[1:], tar[1:]):
        assert f == pytest.approx(np.mean(scores[~same] >= t))
        assert r == pytest.approx(np.mean(scores[same] >= t))
    # AUC = probability a same pair outscores a different pair (ties count half)
    diff = scores[same][:, None] - scores[~same][None, :]
    assert auc(far, tar) == pytest.approx(np.mean((diff > 0) + 0.5 * (diff == 0)), abs=1e-9)
    best = max(np.mean(scores[same] >= t) for t in np.unique(scores) if np.mean(scores[~same] >= t) <= 0.1)
    assert tar_at_far(far, tar, 0.1) == pytest.approx(best)


def test_ten_fold_accuracy_picks_thresholds_on_the_other_nine_folds():
    folds = np.repeat(np.arange(10), 20)
    same = np.tile(np.r_[np.ones(10, bool), np.zeros(10, bool)], 10)
    scores = np.where(same, 0.8, 0.2)
    mean, std, thresholds = ten_fold_accuracy(scores, same, folds)
    assert mean == 1.0 and std == 0.0 and all(0.2 < t < 0.8 for t in thresholds)
    # a fold whose scores are shifted is judged with a threshold learnt elsewhere: it scores 50%
    shifted = scores + np.where(folds == 3, 1.0, 0.0)
    mean, _, _ = ten_fold_accuracy(shifted, same, folds)
    assert mean == pytest.approx((9 * 1.0 + 0.5) / 10)
    m = verification_metrics(scores, same, folds)
    assert set(m) >= {"accuracy", "accuracy_std", "auc", "tar_at_far_1e-2", "tar_at_far_1e-3"}
    with pytest.raises(DataError, match="both same and different pairs"):
        verification_metrics(scores[same], same[same], folds[same])
