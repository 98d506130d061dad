"""Self-contained HTML pages (plots inline as PNG data URIs): the run report, run comparisons, sweep reports."""
