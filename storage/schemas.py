"""Explicit Arrow schemas of every table theoryscope writes.

Files live under ``<results>/<table>/sweep=<name>/``; DuckDB reads them through views of
the same names (``storage.query``). The column names of DESIGN.md are a contract; the
extra columns of ``runs`` make every field of a run's config a column, so anything a grid
sweeps can be grouped by in SQL.
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
    ("log_every", pa.int64()),
    ("dtype", pa.string()),
    ("objective", pa.string()),       # train.objective (regression)
    ("target_column", pa.string()),   # data.target_column (lp-regression from a table)
    ("p", pa.int64()),                # data.p (lp-regression)
    ("condition", pa.float64()),      # data.condition (lp-regression)
    ("overparam", pa.string()),       # model.overparam (acceleration)
    ("lr_grid", pa.string()),         # train.lr_grid as JSON (acceleration)
    ("lr_range", pa.string()),        # train.lr_range as JSON
    ("target", pa.float64()),         # train.target (acceleration)
    ("imbalance", pa.float64()),      # model.imbalance (linear-dynamics)
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
])

# One row per run, measured step and layer (Arora, Ge, Neyshabur & Zhang 2018). The
# cushion columns hold the paper's quantity, the minimum over samples; percentile columns
# (layer_cushion_p10, ...) follow the spec's `percentiles` and are added by layers_schema.
LAYERS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("layer", pa.int64()),                    # 1 = the first weight matrix
    ("fan_in", pa.int64()),
    ("fan_out", pa.int64()),
    ("layer_cushion", pa.float64()),          # mu_i
    ("layer_cushion_mean", pa.float64()),
    ("interlayer_cushion", pa.float64()),     # mu_{i->} = min(1/sqrt(h^i), min_j mu_{i,j})
    ("interlayer_cushion_mean", pa.float64()),
    ("activation_contraction", pa.float64()),  # max_x ||x^i|| / ||phi(x^i)||; null for the last layer
    ("interlayer_smoothness", pa.float64()),  # rho_delta; null for the last layer
    ("noise_attenuation", pa.float64()),      # output perturbation from noise of norm ||x^i|| at layer i
    ("frobenius_norm", pa.float64()),
    ("spectral_norm", pa.float64()),
    ("stable_rank", pa.float64()),
])


def layers_schema(percentiles: tuple[float, ...]) -> pa.Schema:
    schema = LAYERS
    for name in ("layer_cushion", "interlayer_cushion"):
        for q in percentiles:
            schema = schema.append(pa.field(percentile_column(name, q), pa.float64()))
    return schema


def percentile_column(name: str, q: float) -> str:
    return f"{name}_p{q:g}".replace(".", "_")


# One row per run and measured step: the compression bound of Theorem 4.1 and how a net
# compressed by Matrix-Project does.
BOUNDS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("samples", pa.int64()),                  # samples the cushions were measured on
    ("margin", pa.float64()),                 # gamma (classification)
    ("margin_loss", pa.float64()),            # training gamma-margin loss
    ("activation_contraction", pa.float64()),  # c, the maximum over layers
    ("max_output_norm", pa.float64()),        # max over the training set of ||f(x)||
    ("effective_params", pa.float64()),       # q of Theorem 4.1
    ("params", pa.int64()),                   # weights of the uncompressed net
    ("bound", pa.float64()),                  # margin_loss + sqrt(q / n_train), log factors dropped
    ("train_error", pa.float64()),
    ("test_error", pa.float64()),
    ("gen_gap", pa.float64()),
    ("compression_k", pa.int64()),            # Matrix-Project helpers per layer
    ("compressed_params", pa.int64()),        # k per layer
    ("compression_error", pa.float64()),      # median ||f_hat(x) - f(x)|| / ||f(x)||
    ("compressed_train_error", pa.float64()),
    ("compressed_test_error", pa.float64()),
    ("compressed_test_loss", pa.float64()),
    ("compressed_margin_loss", pa.float64()),
])

# One row per pair of runs that differ only in the paired field (Freeman & Bruna 2017):
# the loss along a path from run_a's weights to run_b's, both on run_a's training data.
VALLEYS = pa.schema([
    ("sweep", pa.string()),
    ("run_a", pa.string()),
    ("run_b", pa.string()),
    ("method", pa.string()),                  # string | bezier | linear
    ("barrier", pa.float64()),                # max training loss on the path - max(loss_a, loss_b)
    ("normalized_length", pa.float64()),      # path length / ||theta_b - theta_a||; 1 = straight
    ("beads", pa.int64()),                    # trained points: string beads, 1 (Bezier), 0 (linear)
    ("connected", pa.bool_()),                # barrier_relative <= tolerance
    ("status", pa.string()),                  # ok | relaxation-stopped | end-diverged
    ("pairs", pa.string()),                   # the field the two runs differ in
    ("value_a", pa.string()),                 # its values (JSON)
    ("value_b", pa.string()),
    ("loss_a", pa.float64()),                 # training loss at the ends
    ("loss_b", pa.float64()),
    ("max_loss", pa.float64()),               # highest training loss on the path
    ("linear_barrier", pa.float64()),         # the straight segment's barrier, for comparison
    ("loss_scale", pa.float64()),             # training loss of the zero predictor
    ("barrier_relative", pa.float64()),       # barrier / loss_scale
    ("max_test_loss", pa.float64()),          # highest test loss on the path
    ("max_test_error", pa.float64()),         # highest test 0-1 error on the path (classification)
    ("steps", pa.int64()),                    # relaxation steps (0 for linear)
    ("lr", pa.float64()),                     # relaxation step size
    ("perturbation", pa.float64()),
    ("restarts", pa.int64()),
    ("refine", pa.int64()),                   # loss evaluations per segment between beads
    ("tolerance", pa.float64()),
    ("stopped_step", pa.int64()),             # relaxation stopped on a non-finite loss; null if not
    ("wall_seconds", pa.float64()),           # the whole family's valley measurement
])

# One row per run and target mode of experiment "linear-dynamics" on linear-modes data
# (Saxe, McClelland & Ganguli 2014): when the mode reached half its strength.
MODES = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("mode", pa.int64()),                     # 1 = the largest singular value
    ("singular_value", pa.float64()),         # s
    ("initial_strength", pa.float64()),       # u0 = u_a^T W_e(0) v_a
    ("final_strength", pa.float64()),         # at the last step
    ("half_step", pa.float64()),              # first crossing of s/2, interpolated between steps
    ("half_time", pa.float64()),              # in Saxe's time units (tau = 1): half_step x time_per_step
    ("theory_half_time", pa.float64()),       # (1/2s) ln[u_f (s - u0) / (u0 (s - u_f))], depth 2, decoupled init
    ("relative_error", pa.float64()),         # half_time / theory_half_time - 1
    ("time_per_step", pa.float64()),          # lr x 2/outputs ("mean") or lr x n_train ("half-sum")
])

# One row per run of experiment "acceleration" (Arora, Cohen & Hazan 2018). The view of
# the same name adds ratio_vs_depth1 (storage.query).
ACCELERATION = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("p", pa.int64()),
    ("depth", pa.int64()),
    ("lr", pa.float64()),                     # the fastest stable rate of the grid; null if none
    ("steps_to_target", pa.int64()),          # first step with L - L* <= target (L_0 - L*); null if never
    ("reached", pa.bool_()),
    ("target_loss", pa.float64()),            # L* + target (L_0 - L*)
    ("overparam", pa.string()),               # full | scalar (null at depth 1)
    ("hidden_width", pa.int64()),
    ("init", pa.string()),                    # balanced | identity (null at depth 1)
    ("optimizer", pa.string()),
    ("condition", pa.float64()),
    ("seed", pa.int64()),
    ("target", pa.float64()),
    ("train_steps", pa.int64()),              # the step budget (train.steps)
    ("optimum_loss", pa.float64()),           # L*, the depth-1 optimum (float64)
    ("initial_loss", pa.float64()),           # L_0, the same at every depth
    ("final_loss", pa.float64()),             # at the reported rate
    ("lrs_tried", pa.int64()),
    ("lrs_stable", pa.int64()),
    ("lr_steps", pa.string()),                # JSON: every rate tried -> its steps_to_target
    ("baseline_key", pa.string()),            # joins a run to its depth-1 baseline
])

TABLES: dict[str, pa.Schema] = {"sweeps": SWEEPS, "runs": RUNS, "curves": CURVES, "layers": LAYERS,
                                "bounds": BOUNDS, "valleys": VALLEYS, "acceleration": ACCELERATION,
                                "modes": MODES}
