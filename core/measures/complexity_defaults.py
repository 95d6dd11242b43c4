"""The default settings of the perturbation measures of ``core.measures.complexity``
(Jiang et al. 2020, Appendix C), apart from that module so that the ``[measure]``
section's defaults are read without torch."""

# Jiang et al. 2020, Appendix C: sigma is searched for a deviation of 0.1 of the training
# accuracy; the magnitude-aware noise and box have the floor eps = 1e-3.
PACBAYES_TARGET = 0.1
MAGNITUDE_EPS = 1e-3
# Monte Carlo draws and bisection steps of the sigma search: modest (Jiang's reference code
# uses 10 and 15) so that the measures stay cheap beside training; options of pacbayes().
PACBAYES_DRAWS = 8
PACBAYES_STEPS = 12
# A member's search ends at a sigma whose deviation is this close to the target
# (Dziugaite et al. 2020's reference code: displacement_tolerance = 1e-2).
PACBAYES_TOLERANCE = 0.01
# The sigma search bisects log(sigma) within this range: uniform relative precision
# (12 steps resolve a factor (1e6)^(1/4096), 0.3 %) for sharp and flat nets alike.
SIGMA_RANGE = (1e-5, 10.0)
# Sharpness: the box radius alpha (|w| + eps) and the number of projected ascent steps.
SHARPNESS_ALPHA = 0.05
SHARPNESS_STEPS = 10
# Lanczos steps (Hessian-vector products) of hessian_top.
HESSIAN_ITERATIONS = 10
