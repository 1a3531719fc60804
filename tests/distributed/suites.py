"""The names of the checks in :mod:`tests.distributed.checks` that each suite runs (one group of
spawned processes per suite), kept apart so that collecting the tests imports nothing heavy."""

SUITES: dict[str, tuple[str, ...]] = {
    "two": (
        "stats_buckets",
        "fsdp2_parity",
        "ddp_parity",
        "zero_parity",
        "fsdp1_error",
        "grad_scaler_skip",
        "bf16_mixed_precision",
        "dcp_round_trip",
        "train_entry",
    ),
    "hsdp": ("hsdp_stats_buckets", "hsdp_parity"),
    "presence": (
        "presence_mismatch_raises",
        "presence_equal_parity",
        "presence_elementwise_and_ddp",
    ),
}
