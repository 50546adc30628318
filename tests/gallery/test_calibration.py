"""Threshold calibration: FAR semantics and leave-identity-out scores."""

from __future__ import annotations

import numpy as np

from facepipe.gallery.calibration import (calibrate, false_alarm_rate, leave_identity_out_scores,
                                          mean_templates, threshold_at_far)


def test_threshold_allows_at_most_the_target_share_of_false_alarms():
    scores = np.linspace(-0.5, 0.5, 1000).astype(np.float32)
    for far in (0.1, 0.01, 0.001):
        t = threshold_at_far(scores, far)
        assert false_alarm_rate(scores, t) <= far
        # ... and is the lowest such threshold: one step lower lets more through.
        assert false_alarm_rate(scores, np.nextafter(np.float32(t), np.float32(-1))) > far - 1e-12 or far * 1000 < 1


def test_unresolvable_far_puts_the_threshold_above_every_non_mated_score():
    scores = np.array([0.1, 0.3, 0.2], np.float32)
    assert threshold_at_far(scores, 0.01) > 0.3
    assert false_alarm_rate(scores, threshold_at_far(scores, 0.01)) == 0.0


def test_leave_identity_out_scores_match_an_explicit_recomputation():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    got = leave_identity_out_scores(emb, labels, 5, "mean")
    templates = mean_templates(emb, labels, 5)
    for i in range(len(emb)):
        others = [c for c in range(5) if c != labels[i]]
        assert np.isclose(got["nonmated"][i], max(templates[c] @ emb[i] for c in others), atol=1e-5)
        rest = [j for j in range(len(emb)) if labels[j] == labels[i] and j != i]
        if rest:
            t = emb[rest].sum(0)
            assert np.isclose(got["mated"][i], t @ emb[i] / np.linalg.norm(t), atol=1e-5)
        else:
            assert np.isnan(got["mated"][i])
    result = calibrate(emb, labels, 5, "mean", 0.1)
    assert result["split"] == "leave_identity_out" and result["num_nonmated"] == 12
    assert result["far"] <= 0.1
