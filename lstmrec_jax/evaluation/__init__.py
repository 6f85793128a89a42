"""Full-ranking evaluation: metrics, the eval step, baselines, cold start and reports."""
