"""Explicit Arrow schemas of the tables every sweep writes: sweeps, runs, curves.

Files live under ``<results>/<table>/sweep=<name>/``; DuckDB reads them through views of
the same names (``storage.query``); each measure and experiment declares its own tables
in its module. The column names README lists under "Tables" are a contract; the extra columns of
``runs`` make every field of a run's config a column, so anything a grid sweeps can be
grouped by in SQL.
"""

from __future__ import annotations

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

SWEEPS = pa.schema([
    ("sweep", pa.string()),
    ("spec", pa.string()),            # the TOML text exactly as launched
    ("planned_runs", pa.int64()),
    ("created_at", TIMESTAMP),
    ("code_version", pa.string()),
])

RUNS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("family_id", pa.string()),
    ("family_size", pa.int64()),      # members trained together with this run
    ("experiment", pa.string()),
    ("dataset", pa.string()),         # data.kind
    ("model", pa.string()),           # model.kind
    ("depth", pa.int64()),
    ("width", pa.int64()),
    ("init_scale", pa.float64()),
    ("label_noise", pa.float64()),
    ("seed", pa.int64()),
    ("n_train", pa.int64()),
    ("optimizer", pa.string()),
    ("lr", pa.float64()),
    ("steps", pa.int64()),
    ("status", pa.string()),          # ok | diverged | failed
    ("train_loss", pa.float64()),
    ("test_loss", pa.float64()),
    ("train_error", pa.float64()),    # 0-1 error; null for regression
    ("test_error", pa.float64()),
    ("gen_gap", pa.float64()),        # test - train error (classification) or loss (regression)
    ("diverged_step", pa.int64()),    # step at which the member was frozen; null if never
    ("stopped_step", pa.int64()),     # step whose training loss reached train.stop_train_loss; null if never
    ("reached_stop", pa.bool_()),     # whether it did; null without train.stop_train_loss
    ("error", pa.string()),           # the exception message of a failed family
    ("wall_seconds", pa.float64()),   # training time of the whole family
    ("device", pa.string()),
    ("finished_at", TIMESTAMP),
    ("config", pa.string()),          # canonical JSON of the run; its hash is run_id
    # The rest of the run's config, one column per field.
    ("n_test", pa.int64()),
    ("input_dim", pa.int64()),
    ("output_dim", pa.int64()),
    ("teacher_width", pa.int64()),
    ("n_classes", pa.int64()),
    ("class_sep", pa.float64()),
    ("label_corruption", pa.string()),  # data.label_corruption (classification)
    ("data_seed", pa.int64()),        # data.seed
    ("path", pa.string()),            # data.path (mnist, fashion-mnist, cifar10)
    ("activation", pa.string()),
    ("bias", pa.bool_()),
    ("init", pa.string()),
    ("batch_size", pa.int64()),
    ("momentum", pa.float64()),
    ("weight_decay", pa.float64()),
    ("beta1", pa.float64()),
    ("beta2", pa.float64()),
    ("eps", pa.float64()),
    ("adagrad_eps", pa.float64()),    # train.adagrad_eps (adagrad)
    ("rho", pa.float64()),            # train.rho (adadelta)
    ("adadelta_eps", pa.float64()),   # train.adadelta_eps (adadelta)
    ("log_every", pa.int64()),
    ("stop_train_loss", pa.float64()),  # train.stop_train_loss
    ("dtype", pa.string()),
    ("objective", pa.string()),       # train.objective (regression)
    ("target_column", pa.string()),   # data.target_column (lp-regression from a table)
    ("p", pa.int64()),                # data.p (lp-regression)
    ("condition", pa.float64()),      # data.condition (lp-regression)
    ("overparam", pa.string()),       # model.overparam (acceleration)
    ("lr_grid", pa.string()),         # train.lr_grid as JSON (acceleration)
    ("lr_range", pa.string()),        # train.lr_range as JSON
    ("target", pa.float64()),         # train.target (acceleration)
    ("lr_tolerance", pa.float64()),   # train.lr_tolerance (acceleration)
    ("imbalance", pa.float64()),      # model.imbalance (linear-dynamics)
    ("kernel_size", pa.int64()),      # model.kernel_size (cnn)
    ("pool", pa.int64()),             # model.pool (cnn)
    ("singular_values", pa.string()), # data.singular_values as JSON (linear-modes)
    ("matmul_precision", pa.string()),  # train.matmul_precision
    ("precision_error", pa.float64()),  # |loss as trained - exact float32 loss| / exact, worst of first and last step
    ("code_version", pa.string()),
])

CURVES = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("train_loss", pa.float64()),
    ("test_loss", pa.float64()),
    ("train_error", pa.float64()),
    ("test_error", pa.float64()),
    ("theory_test_loss", pa.float64()),  # closed-form prediction where one exists
    ("rule_deviation", pa.float64()),    # linear-dynamics: ||W_e - W_rule||_F / ||W_rule||_F
    # Where theory_test_loss exists (else null; files from before these columns read them
    # as null): the closed-form training loss at the step, and the run's closed-form optimal
    # stopping point, the same on every row of the run (a fractional step, null when the
    # theory's test loss falls for ever, and the test loss there or its limit).
    ("theory_train_loss", pa.float64()),
    ("theory_best_step", pa.float64()),
    ("theory_best_test_loss", pa.float64()),
])

# The spine: what every sweep writes whatever it measures. Measures and experiments add
# their own tables (``sweeps.measures``, ``sweeps.experiments``; ``sweeps.tables`` has them all).
SPINE: dict[str, pa.Schema] = {"sweeps": SWEEPS, "runs": RUNS, "curves": CURVES}
