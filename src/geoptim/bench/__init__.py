"""The benchmark: tasks (``geoptim.bench.tasks``), their data and models, the shared training loop,
and the runner, records and reports built on them."""
