"""The multi-exit section: the temperature the adaptive rule reached, and when distillation costs the final exit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import multiexit, results_table

CE_FINAL = 0.95


def _summary(seeds: int = 5) -> pd.DataFrame:
    """Rows as `trial_summary` gives them (each (trial, exit) at its best-val epoch): exit-wise CE, the
    adaptive rule (final exit 15 points down at T ~ 6.5) and a constant-T search plus its confirm."""
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.015, seeds)
    rows = []

    def add(stage, method, trial, seed, final, effect, temperature=None, temperature_now=None, cfg="c"):
        for x in range(3):
            acc = final - 0.04 * (2 - x) + effect + rng.normal(0, 0.002)
            rows.append({"stage": stage, "method": method, "trial_id": trial, "seed": seed, "role": "student",
                         "exit": x, "exit_flops": 1e4 * (x + 1), "status": "ok", "generation": 0,
                         "val_acc": acc, "test_acc": acc - 0.003, "temperature": temperature,
                         "temperature_now": temperature_now, "config_id": f"{method}-{cfg}",
                         "distill_weight": 0.5 if method != "multiexit_ce" else None,
                         "hparams_json": json.dumps({"temperature": temperature} if temperature else {})})

    for s in range(seeds):
        add("confirm", "multiexit_ce", f"ce{s}", s, CE_FINAL, seed_effect[s])
        add("confirm", "multiexit", f"ad{s}", s, CE_FINAL - 0.15, seed_effect[s], temperature_now=6.0 + 0.25 * s)
        add("confirm", "multiexit_const", f"ct{s}", s, CE_FINAL + 0.001, seed_effect[s], temperature=1.2)
    for i, (t, cost) in enumerate([(1.2, 0.0), (2.0, 0.05), (3.5, 0.3)]):
        add("search", "multiexit_const", f"sr{i}", 1000 + i, CE_FINAL - cost, 0.0, temperature=t, cfg=f"t{t}")
    add("search", "multiexit_ce", "srce", 1000, CE_FINAL, 0.0)
    return pd.DataFrame(rows)


def test_the_adaptive_temperature_reached_and_the_final_exit_verdicts():
    summary = _summary()
    reached = multiexit.adaptive_temperature(summary, "multiexit")
    assert reached == {"median": 6.5, "min": 6.0, "max": 7.0, "n": 5, "stage": "confirm"}
    text = multiexit.section_text(summary, delta=1.0)
    assert text[0].startswith("The adaptive rule (multiexit) raised the temperature from 1 to 6.50 (from 6.00 to 7.00)")
    adaptive = next(line for line in text if "adaptive T (reached 6.50)" in line)
    const = next(line for line in text if "constant T = 1.2 (chosen on validation)" in line)
    assert "SHOWN worse" in adaptive and adaptive.split("minus exit-wise CE: ")[1].startswith("-15.")
    assert "EQUIVALENT" in const
    when = text[-1]
    assert "T 1.20: +0.0 (6 runs); T 2.00: -5.0; T 3.50: -30.3; adaptive (T 6.00-7.00, 5 runs): -14.9" in when
    assert "every run at T ≥ 2.00 lost more than 1 points" in when


def test_costly_from_needs_every_hotter_run_to_lose():
    effect = pd.DataFrame({"T": [1.0, 1.5, 2.0, 4.0], "vs_ce": [0.2, -2.0, 0.1, -5.0]})
    assert multiexit.costly_from(effect, 1.0) == 4.0  # 1.5 lost, but 2.0 did not: the cut is at 4
    assert multiexit.costly_from(effect.assign(vs_ce=[0.0] * 4), 1.0) is None


def test_results_table_has_a_row_per_rule_and_exit():
    table = results_table.multiexit_table(_summary(), delta=1.0)
    assert sorted(set(table["method"])) == ["multiexit", "multiexit_const"]
    assert len(table) == 6 and (table["k"] == 5).all()
    final = table[table["exit"] == 2].set_index("method")
    assert final.loc["multiexit", "outcome"] == "shown" and final.loc["multiexit", "diff"] == pytest.approx(-15, abs=1)
    assert final.loc["multiexit_const", "outcome"] == "equivalent"
    assert len(multiexit.exit_comparisons(_summary(), 1.0)) == 6  # one Holm family over both rules x 3 exits
