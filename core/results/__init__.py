"""A run's results: built from the steps' records, the recommendation, the table, the report, and
publishing the models and files as one set."""
