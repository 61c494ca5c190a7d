def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    """The real one tears down torch.distributed groups; nothing to do in the simulation."""
