"""Overtraining: when training longer hurts (Advani & Saxe 2017; Nakkiran et al. 2019).

Always on, with no ``[measure]`` key: every run logs its test curve, and where a closed
form covers the run (``core.measures.overtraining``: a linear student of a linear teacher
by full-batch GD) the ``curves`` rows carry its predictions (``sweeps.records``): the test
and training loss at the step (``theory_test_loss``, ``theory_train_loss``) and the run's
optimal stopping point of the closed form itself, minimised over continuous time
(``theory_best_step``, a fractional step, null when the predicted test loss falls for
ever; ``theory_best_test_loss``). The ``overtraining`` view reads, per run, where each
measured test curve is best (the earliest logged step with the lowest value), its final
value, the gap between them and whether early stopping would have helped; it agrees with
``core.measures.overtraining.summarize``. Its theory columns are the closed form's
optimum (not the best logged step), the theory curve's value at the last logged step and
the gap between the two.
"""

from __future__ import annotations

from theoryscope.sweeps.measures.base import Measure

OVERTRAINING = """
        WITH best AS (
            SELECT sweep, run_id, max(step) AS last_step, min(test_loss) AS best_test_loss,
                   min(test_error) AS best_test_error
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
               any_value(theory_best_step) AS theory_best_step,
               any_value(theory_best_test_loss) AS theory_best_test_loss,
               any_value(theory_test_loss) FILTER (WHERE step = last_step) AS theory_final_test_loss,
               any_value(theory_test_loss) FILTER (WHERE step = last_step) - any_value(theory_best_test_loss)
                   AS theory_overtraining_gap
        FROM curves JOIN best USING (sweep, run_id)
        GROUP BY sweep, run_id"""

MEASURE = Measure(name="overtraining", derived={"overtraining": OVERTRAINING})
