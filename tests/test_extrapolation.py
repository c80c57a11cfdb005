"""Learning curves that look ahead: forms chosen by backtest, forecasts whose interval
carries the backtest's error, refusals where that error is large, and labels to reach
a target."""

import math

import numpy as np
import pytest

from tunelab.analysis.extrapolation import FORMS, fit, forecast, labels_to_reach, target_text


def saturating(x, top=0.9, scale=0.6, rate=0.45):
    return top - scale * np.power(x, -rate)


def noisy_curve(truth, sizes, seeds=5, noise=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return [(s, list(truth(s) + rng.normal(0, noise, seeds))) for s in sizes]


def test_a_curve_needs_three_sizes():
    assert forecast("probe", "accuracy", [(8, [0.6, 0.61]), (32, [0.7])]) is None
    assert forecast("probe", "accuracy", [(8, [0.6]), (16, [0.65]), (32, [0.7])]) is not None


def test_every_form_recovers_its_own_curve():
    x = np.array([4.0, 8, 16, 32, 64, 128])
    for form, params in zip(FORMS, ([0.7], [0.4, 0.05], [0.5, 0.4], [0.5, 0.4, 0.92], [0.3, 10.0, 0.9, 0.8])):
        y = form.curve(x, np.array(params), 1.0)
        found = fit(form, x, y, 1.0)
        assert found is not None and np.allclose(form.curve(x, found, 1.0), y, atol=1e-4), form.name


def test_the_forecast_of_a_saturating_curve_holds():
    curve = noisy_curve(saturating, [8, 16, 32, 64])
    made = forecast("probe", "accuracy", curve)
    assert made.form in {"saturating power law", "power law to perfect", "log-linear"}
    assert made.backtests[0].form == made.form  # the chosen form's backtests come first
    assert made.errors[made.form] == min(made.errors.values()) == made.error_per_doubling
    four = next(p for p in made.points if p["factor"] == 4)
    assert four["size"] == 256
    assert four["low"] <= saturating(256) <= four["high"] and abs(four["value"] - saturating(256)) < 0.03
    assert four["high"] - four["low"] > next(p for p in made.points if p["factor"] == 2)["high"] - \
        next(p for p in made.points if p["factor"] == 2)["low"]  # further ahead, wider
    # The backtests are what they say: refits on the first sizes, predicting each later size.
    test = made.first_backtest()
    assert test.fitted_on == [8, 16, 32] and test.size == 64
    assert test.measured == pytest.approx(np.mean(curve[-1][1]))
    mine = [b for b in made.backtests if b.form == made.form]
    assert made.error_per_doubling == pytest.approx(math.sqrt(np.mean([
        (abs(b.predicted - b.measured) / math.log2(b.size / b.fitted_on[-1])) ** 2 for b in mine])))
    assert {(tuple(b.fitted_on), b.size) for b in made.backtests if b.form == "log-linear"} == {
        ((8, 16), 32), ((8, 16), 64), ((8, 16, 32), 64)}


def test_a_flat_curve_chooses_no_further_gain():
    curve = [(s, [0.8, 0.801, 0.799]) for s in (8, 32, 128)]
    made = forecast("probe", "accuracy", curve)
    assert made.form == "no further gain"
    assert all(p["value"] == pytest.approx(0.8, abs=1e-3) for p in made.points)


def test_a_curve_that_surprises_its_backtest_is_refused():
    curve = [(8, [0.50, 0.51]), (32, [0.52, 0.53]), (128, [0.75, 0.76])]  # the last size jumps
    made = forecast("lora", "accuracy", curve)
    assert made.error_per_doubling > 0.05
    assert all("refused" in p and "too large to extrapolate" in p["refused"] for p in made.points)
    answer = labels_to_reach(made, 0.9)
    assert answer["status"] == "cannot extrapolate"
    assert "cannot say" in target_text(answer, "shots per class")


def test_lower_is_better_metrics_look_ahead_downwards():
    curve = noisy_curve(lambda s: 0.2 + 0.8 * s ** -0.5, [8, 16, 32, 64], noise=0.002)
    made = forecast("ordinal", "mae", curve)
    values = [p["value"] for p in made.points]
    assert values[0] < np.mean(curve[-1][1]) and values[1] < values[0]
    assert labels_to_reach(made, 0.5)["status"] == "measured"  # 64 already below 0.5? 0.2+0.1 = 0.3
    reach = labels_to_reach(made, 0.27)
    assert reach["status"] == "forecast" and 64 < reach["size"] <= 256


def test_labels_to_reach_a_target():
    curve = noisy_curve(saturating, [8, 16, 32, 64], noise=0.002)
    made = forecast("probe", "accuracy", curve)
    measured = labels_to_reach(made, 0.7)
    assert measured == {"method": "probe", "target": 0.7, "metric": "accuracy", "status": "measured",
                        "size": next(s for s, vs in curve if np.mean(vs) >= 0.7)}
    ahead = labels_to_reach(made, float(saturating(150)))
    assert ahead["status"] == "forecast" and ahead["low"] <= ahead["size"] and 100 < ahead["size"] < 220
    assert ahead["high"] is None or ahead["high"] >= ahead["size"]
    assert "about" in target_text(ahead, "shots per class")
    out_of_reach = labels_to_reach(made, 0.99)
    assert out_of_reach["status"] == "not within" and out_of_reach["factor"] == 4
    assert "not reached within 4x" in target_text(out_of_reach, "shots per class")
    assert math.isfinite(made.error_per_doubling)


def test_one_seed_carries_its_test_items_noise():
    curve = [(s, [float(saturating(s))]) for s in (8, 16, 32, 64)]
    bare = forecast("probe", "accuracy", curve)
    noisy = forecast("probe", "accuracy", curve, one_run_se=0.01)
    width = lambda made: made.points[0]["high"] - made.points[0]["low"]  # noqa: E731
    assert width(noisy) >= width(bare) + 2 * 1.96 * 0.01 * 0.99
