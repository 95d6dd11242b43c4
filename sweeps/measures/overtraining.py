"""Overtraining: when training longer hurts (Advani & Saxe 2017; Nakkiran et al. 2019).

Always on, with no ``[measure]`` key: every run logs its test curve, and where a closed
form covers the run (``core.measures.overtraining.theory_test_loss``, a linear student of
a linear teacher by full-batch GD) its predicted test loss is the ``theory_test_loss``
column of ``curves`` (``sweeps.records``). The ``overtraining`` view reads, per run, where
each test curve is best (the earliest step with the lowest value), its final value, the
gap between them and whether early stopping would have helped; it agrees with
``core.measures.overtraining.summarize``.
"""

from __future__ import annotations

from theoryscope.sweeps.measures.base import Measure

OVERTRAINING = """
        WITH best AS (
            SELECT sweep, run_id, max(step) AS last_step, min(test_loss) AS best_test_loss,
                   min(test_error) AS best_test_error, min(theory_test_loss) AS theory_best_test_loss
            FROM curves GROUP BY sweep, run_id)
        SELECT sweep, run_id,
               min(step) FILTER (WHERE test_loss = best_test_loss) AS best_step,
               any_value(best_test_loss) AS best_test_loss,
               any_value(test_loss) FILTER (WHERE step = last_step) AS final_test_loss,
               any_value(test_loss) FILTER (WHERE step = last_step) - any_value(best_test_loss) AS overtraining_gap,
               any_value(test_loss) FILTER (WHERE step = last_step) > any_value(best_test_loss)
                   AS early_stopping_helps,
               min(step) FILTER (WHERE test_error = best_test_error) AS best_error_step,
               any_value(best_test_error) AS best_test_error,
               any_value(test_error) FILTER (WHERE step = last_step) AS final_test_error,
               any_value(test_error) FILTER (WHERE step = last_step) - any_value(best_test_error)
                   AS error_overtraining_gap,
               min(step) FILTER (WHERE theory_test_loss = theory_best_test_loss) AS theory_best_step,
               any_value(theory_best_test_loss) AS theory_best_test_loss,
               any_value(theory_test_loss) FILTER (WHERE step = last_step) AS theory_final_test_loss
        FROM curves JOIN best USING (sweep, run_id)
        GROUP BY sweep, run_id"""

MEASURE = Measure(name="overtraining", derived={"overtraining": OVERTRAINING})
