"""The node's services: one per concern, each over the `Store`. RPC handlers call these and nothing else."""
