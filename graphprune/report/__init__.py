"""What a prune reports: the PruneReport, its HTML page and plots."""
