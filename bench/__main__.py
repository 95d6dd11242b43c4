"""``python -m bench``: theoryscope against Ray Tune, Ray tasks and a plain loop."""

from bench.compare import main

main()
