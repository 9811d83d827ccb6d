"""poolctl: a durable control plane on Temporal for server pools, policies, balancers and health checks."""

__version__ = "0.1.0"
