"""The load generator: workloads, arrival processes, one asyncio executor, records and the runner.

The stable entry point is :func:`bench.load.runner.run_load` (and ``run_load_async``).
Nothing heavy is imported here.
"""
