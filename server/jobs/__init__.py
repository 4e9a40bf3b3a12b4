"""MLflow's jobs run once across the fleet: the runner process, its claims and leases, periodic tasks, job submission, the statements on MLflow's job tables."""
