"""Turn run folders into ``report.md``, a self-contained ``report.html`` and PNG plots."""
